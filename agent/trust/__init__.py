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
- `updater`   the update flow: TUF refresh (python-tuf ngclient), director check,
              resumable download, one-pass verify + unpack into the bundle store
              (`agent.update.store`); `install_offline` for air-gapped installs.
- `tuf_errors` python-tuf's exceptions mapped onto the refusal family, in one place.
- `events`    `update.refused` / `update.installed` events for `dev/{id}/events`.

The bundle format itself is `agent.update.bundle`; the store of unpacked bundles `agent.update.store`;
crash-safe writes and symlink flips `agent.fsutil`.

Nothing here is imported by `import agent`; python-tuf and cryptography load on use.
"""
