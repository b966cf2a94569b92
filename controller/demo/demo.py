"""The demo story, as real processes and the commands a person would type.

1. trust: signing keys and a TUF image repository, the device CA (`keys init`, `ca init`)
2. a broker: Mosquitto on the production configuration `fleetgen broker config` writes
   (TLS, a certificate per client, per-device ACL), or the embedded broker (plain MQTT 3.1.1)
3. the controller with its dashboard and enrollment endpoint (`fleetgen serve`)
4. four devices of four boards, each enrolled with a one-time token and its own certificate
   (`fleetgen device add`, `fleetgen-agent install`), each with a factory model installed
   air-gapped (`fleetgen-agent install-bundle`), in its own state directory with its own
   local API socket
5. a release: the fp32 model quantized to int8 (`fleetgen model import`), bundled with its
   probe perplexity, signed and published, and an image model beside it
6. rollouts in waves with health gates (`fleetgen rollout start`): one device's model load
   crashes (a broken accelerator driver, simulated), its health gate rolls it back to the
   factory model, the others commit
7. a power budget for a group (`fleetgen budget set`), shared, pushed signed, and held
8. the network goes (the broker stops): apps generate text and an image through each
   device's local OpenAI-compatible API socket

`run_demo` returns once the story is told (--once), or after Ctrl-C; whatever it started is
stopped on every way out. Each step's outcome is also written to WORKDIR/summary.json.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from controller.demo import localapi
from controller.demo.brokers import FleetMosquitto, _ChildBroker, free_port, start_broker, wait_for_port
from controller.demo.fleetproc import DeviceSpec, FleetProcesses
from controller.demo.harness import Commands, DemoError, Summary, Web, wait_for
from controller.demo.progress import Progress

_REPO = Path(__file__).resolve().parents[2]
_FIXTURES = _REPO / "firmware" / "testdata"
TEXT_MODEL = _REPO / "models" / "text" / "austen-3m-int8"  # the shipped int8 build: the factory model
FP32_MODEL = _REPO / "models" / "text" / "austen-3m"  # the release is quantized from this one
IMAGE_MODEL = _REPO / "models" / "image" / "digits-cvae-onnx"
RELEASE_VERSION = "1.1.0"
PROMPT = "Tell me a story about summer"


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    board: str  # board profile, and the fixture tree under firmware/testdata it reads
    group: str
    # Its model load crashes (FLEETGEN_HEALTH_FAULT, the health check's fault hook): a
    # stand-in for a broken accelerator driver on that one device.
    faulty: bool = False


DEVICES = (
    DemoDevice("cpu-1", "generic-x86_64", "text"),
    DemoDevice("jetson-1", "jetson-orin-nano", "text"),
    DemoDevice("kria-1", "kria-kv260", "text", faulty=True),
    DemoDevice("pi-1", "raspberry-pi-5", "kiosks"),
)
TEXT_BUDGET_W = 40.0


@dataclass
class DemoOptions:
    workdir: Path
    broker: str = "auto"
    once: bool = False
    timeout: float = 90.0


class Story:
    def __init__(self, opts: DemoOptions, ui: Progress, stack: contextlib.ExitStack) -> None:
        self.opts = opts
        self.ui = ui
        self.stack = stack
        self.work = opts.workdir
        self.cmd = Commands(ui, self.work)
        self.summary = Summary()
        self.repo = self.work / "repo"
        self.pki = self.work / "pki"
        self.config = self.work / "controller.toml"
        self.broker: _ChildBroker | None = None
        self.fleet: FleetProcesses | None = None
        self.web: Web | None = None
        self.specs: dict[str, DeviceSpec] = {}
        self.factory = f"{TEXT_MODEL.name}-1.0.0.fgb"
        self.release = f"{TEXT_MODEL.name}-{RELEASE_VERSION}.fgb"
        self.image = f"{IMAGE_MODEL.name}-1.0.0.fgb"
        self.t0 = time.monotonic()

    def _timed(self, name: str) -> None:
        self.summary.timings_s[name] = round(time.monotonic() - self.t0, 1)

    # 1 ------------------------------------------------------------------------------

    def trust(self) -> None:
        self.ui.step(1, "trust: signing keys, a TUF image repository and the device CA")
        self.cmd.run("fleetgen", "keys", "init", "--repo", str(self.repo))
        self.cmd.run("fleetgen", "ca", "init", "--pki", str(self.pki), "--name", "127.0.0.1", "--name", "localhost")
        out = self.work / self.factory
        self.cmd.run("fleetgen", "bundle", "build", str(TEXT_MODEL), "-o", str(out))
        self.cmd.run("fleetgen", "bundle", "publish", str(out), "--repo", str(self.repo))
        self.cmd.run("fleetgen", "bundle", "export", "--repo", str(self.repo), "--to", str(self.work / "factory"))
        self.ui.ok(f"offline root and targets keys, online snapshot/timestamp keys; factory bundle {self.factory} "
                   "signed; device CA with the broker's and controller's TLS identities")
        self._timed("trust")

    # 2 ------------------------------------------------------------------------------

    def start_broker(self) -> None:
        kind = self.opts.broker
        if kind == "auto":
            from controller.demo.brokers import mosquitto_binary

            kind = "mosquitto" if mosquitto_binary() else "embedded"
        self.ui.step(2, f"broker: {kind}")
        if kind == "mosquitto":
            port = free_port()
            conf = self.work / "broker-config"
            self.cmd.run("fleetgen", "broker", "config", "--out", str(conf), "--pki", str(self.pki), "--port",
                         str(port), "--bind", "127.0.0.1", "--certs", str(conf / "certs"))
            # The generated ACL sits beside the certificates, where the config says it is.
            shutil.copyfile(conf / "fleetgen.acl", conf / "certs" / "fleetgen.acl")
            broker: _ChildBroker = FleetMosquitto(self.work / "broker", port=port, config_dir=conf)
            broker.start()
            self.ui.ok(f"Mosquitto on {broker.url}: TLS, client certificates of the device CA only, "
                       "each device confined to fleetgen/v1/dev/<its id>/# by the ACL")
        else:
            broker = start_broker("embedded", self.work / "broker")
            self.ui.ok(f"embedded broker (amqtt) on {broker.url}: MQTT 3.1.1, plain TCP, no ACL "
                       "(install Mosquitto for TLS and per-device ACLs)")
        self.broker = broker
        self.stack.callback(self._stop_broker)
        self.summary.broker, self.summary.tls = kind, kind == "mosquitto"
        self._timed("broker")

    def _stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    # 3 ------------------------------------------------------------------------------

    def start_controller(self) -> None:
        assert self.broker is not None
        self.ui.step(3, "the controller: ingest, repository, rollouts, power, dashboard, enrollment")
        http_port, enroll_port = free_port(), free_port()
        fleet = FleetProcesses(self.work, self.broker.url, protocol=self.broker.protocol, repository=self.repo,
                               keepalive=5, sample_interval_s=0.5, publish_interval_s=1.0)
        tls = [f'{key} = "{self.pki / name}"' for key, name in (
            ("ca_file", "ca.pem"), ("cert_file", "controller.pem"), ("key_file", "controller.key"))]
        config = self.config
        config.write_text("\n".join([
            f'state_dir = "{self.work / "controller"}"',
            f'database_url = "{fleet.db_url}"',
            f'repository = "{self.repo}"',
            "rollout_tick_s = 0.3",
            "power_interval_s = 1.0",
            "[mqtt]",
            f'url = "{self.broker.url}"',
            f'protocol = "{self.broker.protocol}"',
            "keepalive = 5",
            "reconnect_min_s = 0.2",
            "reconnect_max_s = 2.0",
            *(tls if self.summary.tls else []),
            "[http]",
            f'listen = "127.0.0.1:{http_port}"',
            "[enroll]",
            f'listen = "127.0.0.1:{enroll_port}"',
            f'broker_url = "{self.broker.url}"',
            f'pki_dir = "{self.pki}"',
            "",
        ]))
        self.ui.command(self.cmd.show("fleetgen", ("serve", "--config", str(config))))
        fleet.start_controller(config)
        self.fleet = fleet
        self.stack.callback(fleet.stop)
        for port in (http_port, enroll_port):
            if not wait_for_port(port, timeout=self.opts.timeout):
                raise DemoError(f"the controller did not listen on {port}; see {self.work / 'logs/controller.log'}")
        self.web = Web(f"http://127.0.0.1:{http_port}")
        self.enroll_url = f"https://127.0.0.1:{enroll_port}"
        self.summary.dashboard = self.web.url
        self.ui.ok(f"dashboard and REST API on {self.web.url}, enrollment on {self.enroll_url}")
        self._timed("controller")

    # 4 ------------------------------------------------------------------------------

    def _enroll(self, dev: DemoDevice) -> DeviceSpec:
        """One device: a token, its own key and certificate, its factory model, its agent."""
        root = self.work / "devices" / dev.device_id
        token = self.cmd.run("fleetgen", "device", "add", dev.device_id, "--ttl", "1h", "--config", str(self.config),
                             quiet=True).strip()
        self.cmd.run("fleetgen-agent", "install", "--controller", self.enroll_url, "--token", token,
                     "--root", str(root), "--board", dev.board, "--venv", sys.prefix, quiet=True)
        state = root / "var/lib/fleetgen"
        self.cmd.run("fleetgen-agent", "install-bundle", str(self.work / self.factory), "--metadata",
                     str(self.work / "factory"), "--board", dev.board, "--state-dir", str(state), quiet=True)
        # Each agent reads its board from a copy of that board's fixture tree (the governor may write to it).
        board_root = self.work / "boards" / dev.device_id
        shutil.copytree(_FIXTURES / dev.board, board_root, dirs_exist_ok=True)
        pki = state / "pki"
        env = (("FLEETGEN_HEALTH_FAULT", f"load:crash:{TEXT_MODEL.name}-{RELEASE_VERSION}"),) if dev.faulty else ()
        return DeviceSpec(dev.device_id, board_profile=dev.board, board_root=str(board_root),
                          tls=(str(pki / "ca.pem"), str(pki / f"{dev.device_id}.pem"),
                               str(pki / f"{dev.device_id}.key")) if self.summary.tls else None,
                          state_dir=str(state), api_socket=str(self.work / "run" / f"{dev.device_id}.sock"), env=env)

    def enroll(self) -> None:
        assert self.fleet is not None
        self.ui.step(4, f"{len(DEVICES)} devices of {len(DEVICES)} boards enroll, each with a one-time token")
        first = DEVICES[0]
        self.ui.command(self.cmd.show("fleetgen", ("device", "add", first.device_id, "--ttl", "1h",
                                                  "--config", str(self.config))) + "   # prints fgt1.…")
        self.ui.command(self.cmd.show("fleetgen-agent", (
            "install", "--controller", self.enroll_url, "--token", "fgt1.…", "--root",
            str(self.work / "devices" / first.device_id), "--board", first.board)))
        self.ui.command(self.cmd.show("fleetgen-agent", (
            "install-bundle", self.factory, "--metadata", str(self.work / "factory"), "--state-dir", "…")))
        self.ui.info(f"... and the same for {', '.join(d.device_id for d in DEVICES[1:])}")
        (self.work / "run").mkdir(exist_ok=True)
        with (self.ui.waiting("enrolling: own key, CSR, certificate; root metadata pinned; factory model installed"),
              ThreadPoolExecutor(len(DEVICES)) as pool):
            specs = list(pool.map(self._enroll, DEVICES))
        for spec in specs:
            self.specs[spec.device_id] = spec
            self.fleet.start_agent(spec)
        assert self.web is not None
        web = self.web
        with self.ui.waiting("agents starting and connecting"):
            seen = wait_for(lambda: (lambda ds: ds if all(
                ds.get(d.device_id, {}).get("status") == "online"
                and ds[d.device_id].get("active_bundle") == self.factory.removesuffix(".fgb") for d in DEVICES)
                else None)(web.devices()), self.opts.timeout, "every device online", self.fleet)
        for dev in DEVICES:
            d = seen[dev.device_id]
            self.summary.devices[dev.device_id] = {"board": d["board"], "online": True, "group": dev.group,
                                                   "factory": d["active_bundle"]}
        identity = "its own certificate over TLS" if self.summary.tls else "plain MQTT (embedded broker)"
        self.ui.ok(f"all {len(DEVICES)} online, each with {identity}, running its factory model")
        self.ui.block(self.cmd.run("fleetgen", "fleet", "ls", "--config", str(self.config)))
        self._timed("enrolled")

    # 5 ------------------------------------------------------------------------------

    def release_bundles(self) -> None:
        self.ui.step(5, "a release: the fp32 model quantized to int8, bundled, signed, published")
        export = self.work / "export"
        export.mkdir(exist_ok=True)
        for name in ("model.onnx", "config.json", "tokenizer.json", "generation_config.json"):
            shutil.copyfile(FP32_MODEL / name, export / name)  # what an Optimum export holds
        model = self.work / "release" / f"{TEXT_MODEL.name}-{RELEASE_VERSION}"
        self.ui.info(f"{self.cmd.rel(str(export))}: the fp32 model as an Optimum ONNX export")
        self.cmd.run("fleetgen", "model", "import", str(export), "-o", str(model), "--quantize", "int8",
                     "--name", TEXT_MODEL.name, "--version", RELEASE_VERSION)
        out = self.work / self.release
        built = self.cmd.run("fleetgen", "bundle", "build", str(model), "-o", str(out))
        self.ui.block(built.strip())
        self.cmd.run("fleetgen", "bundle", "publish", str(out), "--repo", str(self.repo))
        image = self.work / self.image
        self.cmd.run("fleetgen", "bundle", "build", str(IMAGE_MODEL), "-o", str(image))
        self.cmd.run("fleetgen", "bundle", "publish", str(image), "--repo", str(self.repo))
        self.ui.ok(f"{self.release} and {self.image} are signed TUF targets")
        self._timed("release")

    # 6 ------------------------------------------------------------------------------

    def rollouts(self) -> None:
        assert self.web is not None and self.fleet is not None
        self.ui.step(6, "rollouts in waves, each wave gated on the devices' health checks")
        # Groups select devices by board, tag, id or reported label; the kiosk is tagged.
        self.cmd.run("fleetgen", "device", "tag", "pi-1", "kiosk", "--config", str(self.config))
        self.cmd.run("fleetgen", "group", "create", "text", "--config", str(self.config))
        boards = [a for d in DEVICES if d.group == "text" for a in ("--board", d.board)]
        self.cmd.run("fleetgen", "group", "add", "text", *boards, "--config", str(self.config))
        self.cmd.run("fleetgen", "group", "create", "kiosks", "--config", str(self.config))
        self.cmd.run("fleetgen", "group", "add", "kiosks", "--tag", "kiosk", "--config", str(self.config))
        started = self.cmd.run("fleetgen", "rollout", "start", self.release, "--to", "text", "--waves", "1,100%",
                               "--max-failures", "50%", "--wave-timeout", "2m", "--config", str(self.config))
        self.ui.info(started.strip())
        started = self.cmd.run("fleetgen", "rollout", "start", self.image, "--to", "kiosks", "--waves", "100%",
                               "--wave-timeout", "2m", "--config", str(self.config))
        self.ui.info(started.strip())
        web = self.web
        shown: set[tuple[str, str]] = set()

        def finished() -> list[dict[str, Any]] | None:
            rollouts = web.get("/api/v1/rollouts")["rollouts"]
            for r in rollouts:  # progress as it happens: each device's outcome once
                detail = web.get(f"/api/v1/rollouts/{r['id']}")
                for wave_no, wave in enumerate(detail["waves"], 1):
                    for entry in wave["devices"]:
                        key = (entry["device_id"], entry["result"])
                        if entry["result"] in ("committed", "failed", "timed_out") and key not in shown:
                            shown.add(key)
                            text = f"rollout {r['id']} wave {wave_no}: {entry['device_id']} {entry['result']}"
                            if entry["result"] == "committed":
                                self.ui.ok(text)
                            else:
                                self.ui.warn(text + (f" ({entry['detail']})" if entry.get("detail") else ""))
            done = len(rollouts) == 2 and all(r["status"] in ("completed", "halted", "aborted") for r in rollouts)
            return rollouts if done else None

        with self.ui.waiting("waves: download over MQTT, verify (TUF + director), unpack, switch, health check"):
            rollouts = wait_for(finished, self.opts.timeout * 2, "both rollouts to finish", self.fleet)
        for r in rollouts:
            self.summary.rollouts[r["group"]] = {"id": r["id"], "bundle": r["bundle"], "status": r["status"],
                                                 "reason": r.get("reason")}
        self.ui.block(self.cmd.run("fleetgen", "rollout", "ls", "--config", str(self.config)).strip())
        self.ui.block(self.cmd.run("fleetgen", "rollout", "status", "1", "--config", str(self.config)).strip())
        # What each device runs now, and why the faulty one does not run the release.
        want = {"text": self.release.removesuffix(".fgb"), "kiosks": self.image.removesuffix(".fgb")}
        for dev in DEVICES:
            expected = self.factory.removesuffix(".fgb") if dev.faulty else want[dev.group]

            def settled(dev: DemoDevice = dev, expected: str = expected) -> dict[str, Any] | None:
                d = web.devices()[dev.device_id]
                return d if d["active_bundle"] == expected else None

            d = wait_for(settled, self.opts.timeout, f"{dev.device_id} to report {expected}", self.fleet)
            entry = self.summary.devices[dev.device_id]
            entry["bundle"] = d["active_bundle"]
            kinds = [e["kind"] for e in web.events(dev.device_id)]
            entry["events"] = [k for k in kinds if k.startswith("update.")]
            if dev.faulty:
                rolled = [e for e in web.events(dev.device_id) if e["kind"] == "update.rolled_back"]
                entry["rolled_back"] = rolled[-1]["message"] if rolled else None
                self.ui.warn(f"{dev.device_id}: health gate failed, rolled back to {d['active_bundle']}: "
                             f"{entry['rolled_back']}")
        self._timed("rollouts")

    # 7 ------------------------------------------------------------------------------

    def power(self) -> None:
        assert self.web is not None
        self.ui.step(7, f"a power budget: {TEXT_BUDGET_W:g} W for the text group, shared by demand and priority")
        # The x86 box idles at 10 W (its board profile): a floor above that, and first call on the rest.
        self.cmd.run("fleetgen", "budget", "device", "cpu-1", "--priority", "2", "--floor", "12", "--cap", "20",
                     "--config", str(self.config))
        self.cmd.run("fleetgen", "budget", "set", "text", f"{TEXT_BUDGET_W:g}", "--config", str(self.config))
        web = self.web
        members = [d.device_id for d in DEVICES if d.group == "text"]
        t_set = time.monotonic()

        def held() -> dict[str, Any] | None:
            power = web.get("/api/v1/groups/text/power")
            devices = web.devices()
            alloc = {m["device_id"]: m.get("allocated_w") for m in power["devices"]}
            if any(alloc.get(d) is None for d in members):
                return None
            self.summary.timings_s.setdefault("power_allocated_after", round(time.monotonic() - t_set, 1))
            # in force: every device reports the budget it was pushed
            if any(devices[d]["budget_w"] is None or abs(devices[d]["budget_w"] - alloc[d]) > 0.05 * alloc[d] + 0.01
                   for d in members):
                return None
            return {"budget_w": power["budget_w"], "allocated_w": power["allocated_w"], "devices": {
                d: {"allocated_w": alloc[d], "budget_w": devices[d]["budget_w"], "draw_w": devices[d]["power_w"]}
                for d in members}}

        with self.ui.waiting("allocation pushed in each device's signed desired document, governor in force"):
            state = wait_for(held, self.opts.timeout, "every text device to report its budget", self.fleet)
        self.summary.power = state
        self.ui.block(self.cmd.run("fleetgen", "budget", "show", "text", "--config", str(self.config)).strip())
        over = [d for d, v in state["devices"].items() if v["draw_w"] is not None and v["draw_w"] > v["budget_w"]]
        if over:
            self.ui.warn(f"over budget: {', '.join(over)}")
        else:
            self.ui.ok(f"{state['allocated_w']:.1f} W allocated of {TEXT_BUDGET_W:g} W; every device draws under "
                       "the budget it reports")
        self.ui.block(self.cmd.run("fleetgen", "device", "ls", "--config", str(self.config)).strip())
        self._timed("power")

    # 8 ------------------------------------------------------------------------------

    def offline(self) -> None:
        assert self.fleet is not None
        self.ui.step(8, "the network goes away; apps generate through each device's local API")
        for dev in DEVICES:  # each API serves what its device runs now
            sock = Path(self.specs[dev.device_id].api_socket or "")
            wait_for(partial(localapi.ready, sock), self.opts.timeout, f"{dev.device_id}'s local API")
        self.ui.info("broker stopped")
        self._stop_broker()
        self.broker = None
        images = self.work / "images"
        images.mkdir(exist_ok=True)
        for dev in DEVICES:
            sock = Path(self.specs[dev.device_id].api_socket or "")
            shown_sock = self.cmd.rel(str(sock))
            models = localapi.get(sock, "/v1/models")["data"]
            model = models[0]["id"]
            if dev.group == "kiosks":
                body = {"model": model, "prompt": "the digit 3", "response_format": "b64_json"}
                self.ui.command(f"curl --unix-socket {shown_sock} http://localhost/v1/images/generations "
                                f"-d '{json.dumps(body)}'")
                answer = localapi.post(sock, "/v1/images/generations", body)
                png = base64.b64decode(answer["data"][0]["b64_json"])
                path = images / f"{dev.device_id}-digit-3.png"
                path.write_bytes(png)
                self.ui.ok(f"{dev.device_id} ({model}): a {len(png)}-byte PNG -> {self.cmd.rel(str(path))}")
                self.summary.offline[dev.device_id] = {"model": model, "png_bytes": len(png), "path": str(path)}
            else:
                body = {"model": model, "prompt": PROMPT, "max_tokens": 40, "seed": 7}
                self.ui.command(f"curl --unix-socket {shown_sock} http://localhost/v1/completions "
                                f"-d '{json.dumps(body)}'")
                answer = localapi.post(sock, "/v1/completions", body)
                text = answer["choices"][0]["text"]
                bundle = self.summary.devices[dev.device_id].get("bundle", answer["model"])
                self.ui.ok(f"{dev.device_id} ({bundle}): {PROMPT}{' '.join(text.split())}")
                self.summary.offline[dev.device_id] = {"model": answer["model"], "text": text}
        self._timed("offline")

    def reconnect(self) -> None:
        """Interactive runs: the network comes back and the fleet reconnects, to be explored."""
        assert self.fleet is not None and self.web is not None
        self.ui.step(9, "the network is back")
        kind = self.summary.broker
        if kind == "mosquitto":
            conf = self.work / "broker-config"
            port = int(self.fleet.broker_url.rsplit(":", 1)[1])
            broker: _ChildBroker = FleetMosquitto(self.work / "broker", port=port, config_dir=conf)
            broker.start()
        else:
            from controller.demo.brokers import EmbeddedBroker

            broker = EmbeddedBroker(self.work / "broker", port=int(self.fleet.broker_url.rsplit(":", 1)[1]))
            broker.start()
        self.broker = broker
        web = self.web
        with self.ui.waiting("devices reconnecting; telemetry spooled while offline flows in"):
            wait_for(lambda: all(d["status"] == "online" for d in web.devices().values()), self.opts.timeout,
                  "every device back online", self.fleet)
        self.ui.ok("all devices online again")

    def try_these(self) -> None:
        c = self.cmd.rel(str(self.config))
        sock = self.cmd.rel(str(self.work / "run" / "cpu-1.sock"))
        self.ui.step(10 if not self.opts.once else 9, "try it")
        self.ui.info(f"dashboard: {self.summary.dashboard}   (Prometheus: {self.summary.dashboard}/metrics)")
        for line in (f"fleetgen fleet ls --config {c}",
                     f"fleetgen rollout status 1 --config {c}",
                     f"fleetgen budget show text --config {c}",
                     f"curl --unix-socket {sock} http://localhost/v1/completions "
                     f"-d '{{\"model\": \"{TEXT_MODEL.name}\", \"prompt\": \"It was\", \"max_tokens\": 24}}'"):
            self.ui.command(line)
        self.ui.info("the openai client, on the same socket:")
        self.ui.block(localapi.openai_snippet(sock, TEXT_MODEL.name))
        self.ui.info(f"state and logs: {self.cmd.rel(str(self.work))}/ (logs/, devices/, repo/)")


def run_demo(opts: DemoOptions, ui: Progress, wait_forever: Callable[[], None]) -> int:
    if opts.workdir.exists():
        shutil.rmtree(opts.workdir)
    opts.workdir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        story = Story(opts, ui, stack)
        story.trust()
        story.start_broker()
        story.start_controller()
        story.enroll()
        story.release_bundles()
        story.rollouts()
        story.power()
        story.offline()
        story.summary.timings_s["total"] = round(time.monotonic() - story.t0, 1)
        story.summary.write(opts.workdir / "summary.json")
        if not opts.once:
            story.reconnect()
        story.try_these()
        if not opts.once:
            ui.info("the fleet keeps running; Ctrl-C stops it all")
            with contextlib.suppress(KeyboardInterrupt):
                wait_forever()
        ui.info("stopping the agents, the controller and the broker")
    ui.ok(f"done in {time.monotonic() - story.t0:.0f}s")
    return 0
