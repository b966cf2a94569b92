"""The image repository (TUF, python-tuf's Metadata API) and its keys.

- `keystore`   key files: generate, write (PEM PKCS8, encrypted with a passphrase when
               given), load as python-tuf signers.
- `repository` the repository on disk: init, publish a bundle, re-sign the online roles,
               rotate and revoke keys through root, export for air-gapped devices.
"""
