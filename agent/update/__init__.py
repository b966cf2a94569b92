"""The update lifecycle (DESIGN §2, §5): from a verified director document to a committed
or rolled-back bundle.

- `machine`    the pure table `step(state, event) -> (state, actions)` with the loop counter.
- `journal`    the one on-disk truth (STATE/update/journal.json), written before each action.
- `worker`     the adapter: runs the actions on a thread, posts events and reported fields.
- `install`    the steps' I/O: resumable download, one-pass verify + unpack, offline install.
- `health`     the health check in a child process (deadline, RLIMIT_AS, probe perplexity).
- `conditions` maintenance window, drain, battery floor, free disk.
- `store`      the bundle store: bundles/, `current`, `previous`; unpack, switch, rollback.
- `bundle`     the `.fgb` format: build, read, verify and unpack in one streamed pass.

Verification (TUF, director, DSSE, fetchers) is `agent.trust`'s.
"""
