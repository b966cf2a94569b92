"""Trust: verifying what the controller asks a device to install (DESIGN §4).

Modules, pure verification split from I/O as python-tuf does:

- `errors`    the refusal family; each error names its check (`TrustError.check`).
- `dsse`      DSSE pre-authentication encoding, Ed25519 sign/verify of exact payload bytes.
- `director`  verification of the per-device director document (pure).
- `layout`    where trusted state lives under the state dir; provisioning (pinning root).
- `fetch`     download policy (deadline, throughput floor), the fetcher base class, a
              local-directory fetcher (air-gapped installs).
- `mqtt_fetcher` / `https_fetcher`  fetchers over `dev/{id}/req`/`resp` and over HTTPS.
- `transport` the tiny publish/subscribe interface the MQTT fetcher (and the controller's
              responder) use; `agent.mqtt.link.MqttLink` implements it.
- `updater`   verification of a desired document: TUF refresh (python-tuf ngclient),
              director check, the named target against signed targets (`VerifiedDesired`).
- `target`    the verified target (path, length, sha256).
- `tuf_errors` python-tuf's exceptions mapped onto the refusal family, in one place.

Verification only: downloading, unpacking, switching, the health check and rollback are
the update lifecycle's (`agent/update/`: bundle format, store, install steps, journal,
state machine, worker); crash-safe writes and symlink flips are `agent.fsutil`.

Nothing here is imported by `import agent`; python-tuf and cryptography load on use.
"""
