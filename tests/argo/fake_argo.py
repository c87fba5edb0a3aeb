"""A local stand-in for the Argo Workflows server: a real HTTP server speaking the parts of its
REST API the Argo executor uses (submit, get, list with a label selector, the workflow event
stream, stop), which ACTUALLY runs each submitted workflow's one container template: its command
in a subprocess. A submitted workflow must validate against hera's models of the Argo API.

What a cluster would give the pod is emulated: the environment is the template's ``env`` plus
``envFrom`` Secrets / ConfigMaps registered with :meth:`FakeArgo.add_secret` (a missing one fails
the pod as Kubernetes does); each pod gets a private directory that the paths named by its output
parameters' ``valueFrom.path`` are mapped into (its own filesystem); ``{{retries}}`` is
substituted. The workflow goes Pending -> Running -> Succeeded / Failed with ``status.nodes``
and the global ``status.outputs.parameters``; ``retryStrategy.limit`` retries a failed pod;
``activeDeadlineSeconds`` terminates it ("Step exceeded its deadline"); ``PUT .../stop``
terminates it (SIGTERM, SIGKILL after a grace) and is recorded in :attr:`FakeArgo.stops`.
:attr:`FakeArgo.refusing` makes it refuse submissions, as a cluster whose RBAC says no.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
from aiohttp import web
from hera.workflows import models as m

from forge_dev.stack import free_port

KILL_GRACE = 10.0


def _selector(text: str) -> dict[str, str]:
    """``a=b,c=d`` (equality requirements only: what the executor sends)."""
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _selected(workflow: dict[str, Any], wanted: dict[str, str]) -> bool:
    labels = workflow["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, code: int, message: str) -> web.Response:
    # grpc-gateway's error body, as the Argo server answers.
    return web.json_response({"code": code, "message": message}, status=status)


class _Pod:
    def __init__(self, workflow: dict[str, Any]) -> None:
        self.workflow = workflow
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()


class FakeArgo:
    def __init__(self, token: str = "") -> None:
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.submitted: list[dict[str, Any]] = []
        self.stops: list[str] = []
        self.secrets: dict[str, dict[str, str]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._root = Path(tempfile.mkdtemp(prefix="fake-argo-"))
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        # (status, message): every submission is refused so (a cluster whose RBAC says no).
        self.refusing: tuple[int, str] | None = None
        self._watchers: list[tuple[dict[str, str], asyncio.Queue[tuple[str, dict[str, Any]]]]] = []
        self.watch_connections = 0

    def add_secret(self, name: str, data: dict[str, str]) -> None:
        self.secrets[name] = dict(data)

    async def start(self) -> FakeArgo:
        app = web.Application()
        app.router.add_post("/api/v1/workflows/{namespace}", self._create)
        app.router.add_get("/api/v1/workflows/{namespace}", self._list)
        app.router.add_get("/api/v1/workflows/{namespace}/{name}", self._get)
        app.router.add_put("/api/v1/workflows/{namespace}/{name}/stop", self._stop)
        app.router.add_get("/api/v1/workflow-events/{namespace}", self._events)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        for _, queue in self._watchers:
            queue.put_nowait(("", {}))  # ends the stream
        for pod in self._pods.values():
            if pod.process is not None and pod.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGKILL)
            if pod.task is not None:
                pod.task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._root, ignore_errors=True)

    # --- waiting, for tests -------------------------------------------------------------------

    async def wait_for(self, check: Any, timeout: float = 60.0) -> Any:
        """Until ``check()`` returns something truthy (re-checked on every workflow change)."""

        async def wait() -> Any:
            async with self._changed:
                while not (found := check()):
                    await self._changed.wait()
                return found

        return await asyncio.wait_for(wait(), timeout)

    def by_label(self, key: str, value: str) -> list[dict[str, Any]]:
        return [w for w in self.workflows.values() if (w["metadata"].get("labels") or {}).get(key) == value]

    async def _notify(self, workflow: dict[str, Any] | None = None, kind: str = "MODIFIED") -> None:
        if workflow is not None:
            metadata = workflow["metadata"]
            metadata["resourceVersion"] = str(int(metadata.get("resourceVersion") or "0") + 1)
            for wanted, queue in self._watchers:
                if _selected(workflow, wanted):
                    queue.put_nowait((kind, json.loads(json.dumps(workflow))))
        async with self._changed:
            self._changed.notify_all()

    # --- the API ------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return not self.token or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 16, "token not valid")
        namespace = request.match_info["namespace"]
        if self.refusing is not None:
            return _error(self.refusing[0], 7, self.refusing[1])
        try:
            body = await request.json()
            # What the real server would refuse: a body that is no WorkflowCreateRequest.
            m.WorkflowCreateRequest.model_validate(body)
            workflow = body["workflow"]
            name = workflow["metadata"].get("name") or workflow["metadata"]["generateName"] + uuid.uuid4().hex[:5]
            spec = workflow["spec"]
            template = next(t for t in spec["templates"] if t["name"] == spec["entrypoint"])
            container = template["container"]
            if not (container["image"] and container["command"]):
                raise ValueError("a container needs an image and a command")
        except (ValueError, KeyError, TypeError, StopIteration, pydantic.ValidationError) as exc:
            return _error(400, 3, f"invalid workflow: {exc!r}")
        if (namespace, name) in self.workflows:
            return _error(409, 6, f'workflows.argoproj.io "{name}" already exists')
        workflow["metadata"].update(
            name=name, namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1"
        )
        workflow["status"] = {"phase": "Pending", "startedAt": _now(), "nodes": {}}
        self.workflows[(namespace, name)] = workflow
        self.submitted.append(workflow)
        pod = self._pods[(namespace, name)] = _Pod(workflow)
        pod.task = asyncio.create_task(self._execute(pod, template, int(spec.get("activeDeadlineSeconds") or 0)))
        await self._notify(workflow, "ADDED")
        return web.json_response(workflow)

    async def _get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 16, "token not valid")
        key = (request.match_info["namespace"], request.match_info["name"])
        workflow = self.workflows.get(key)
        if workflow is None:
            return _error(404, 5, f'workflows.argoproj.io "{key[1]}" not found')
        return web.json_response(workflow)

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 16, "token not valid")
        namespace = request.match_info["namespace"]
        wanted = _selector(request.query.get("listOptions.labelSelector", ""))
        items = [w for (ns, _), w in self.workflows.items() if ns == namespace and _selected(w, wanted)]
        return web.json_response({"metadata": {"resourceVersion": "1"}, "items": items})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The watch: one JSON line ``{"result": {"type", "object"}}`` per change, until the
        client goes."""
        if not self._authorized(request):
            return _error(401, 16, "token not valid")
        wanted = _selector(request.query.get("listOptions.labelSelector", ""))
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        entry = (wanted, queue)
        self._watchers.append(entry)
        self.watch_connections += 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while True:
                kind, workflow = await queue.get()
                if not kind:
                    break
                line = json.dumps({"result": {"type": kind, "object": workflow}}) + "\n"
                await response.write(line.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(entry)
        return response

    async def _stop(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 16, "token not valid")
        key = (request.match_info["namespace"], request.match_info["name"])
        workflow = self.workflows.get(key)
        if workflow is None:
            return _error(404, 5, f'workflows.argoproj.io "{key[1]}" not found')
        self.stops.append(key[1])
        pod = self._pods[key]
        if workflow["status"]["phase"] in ("Pending", "Running"):
            workflow["status"]["message"] = "Stopped with strategy 'Stop'"
            pod.stopped.set()
        await self._notify(workflow)
        return web.json_response(workflow)

    # --- running the pod ------------------------------------------------------------------------

    def _environment(self, container: dict[str, Any], retries: int, mapped: dict[str, str]) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C.UTF-8"}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                name = source["secretRef"]["name"]
                if name not in self.secrets:
                    raise LookupError(f'secret "{name}" not found')
                env.update(self.secrets[name])
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                if name not in self.config_maps:
                    raise LookupError(f'configmap "{name}" not found')
                env.update(self.config_maps[name])
        for item in container.get("env") or []:
            value = str(item.get("value", "")).replace("{{retries}}", str(retries))
            env[item["name"]] = mapped.get(value, value)
        return env

    async def _execute(self, pod: _Pod, template: dict[str, Any], deadline: int) -> None:
        workflow = pod.workflow
        status = workflow["status"]
        limit = int((template.get("retryStrategy") or {}).get("limit") or 0)
        try:
            async with asyncio.timeout(deadline or None):
                for retries in range(limit + 1):
                    phase = await self._attempt(pod, template, retries)
                    if phase == "Succeeded" or pod.stopped.is_set():
                        break
        except TimeoutError:
            await self._terminate(pod)
            status["message"] = "Step exceeded its deadline"
            phase = "Failed"
            for node in status["nodes"].values():
                if node["phase"] == "Running":
                    node.update(phase="Failed", message="Step exceeded its deadline", finishedAt=_now())
        status["phase"] = phase if not pod.stopped.is_set() else "Failed"
        status["finishedAt"] = _now()
        await self._notify(workflow)

    async def _attempt(self, pod: _Pod, template: dict[str, Any], retries: int) -> str:
        workflow = pod.workflow
        status = workflow["status"]
        container = template["container"]
        node_id = f"{workflow['metadata']['name']}-{retries}"
        node: dict[str, Any] = {
            "id": node_id,
            "name": f"{workflow['metadata']['name']}({retries})",
            "displayName": f"{workflow['metadata']['name']}({retries})",
            "type": "Pod",
            "templateName": template["name"],
            "phase": "Running",
            "startedAt": _now(),
        }
        status["nodes"][node_id] = node
        status["phase"] = "Running"
        await self._notify(workflow)
        rootfs = self._root / node_id
        rootfs.mkdir(parents=True)
        outputs = (template.get("outputs") or {}).get("parameters") or []
        mapped = {o["valueFrom"]["path"]: str(rootfs / o["valueFrom"]["path"].lstrip("/")) for o in outputs}
        for path in mapped.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            env = self._environment(container, retries, mapped)
        except LookupError as exc:
            node.update(phase="Error", message=f"CreateContainerConfigError: {exc}", finishedAt=_now())
            status["message"] = node["message"]
            return "Error"
        argv = [mapped.get(a, a) for a in [*container["command"], *(container.get("args") or [])]]
        pod.process = await asyncio.create_subprocess_exec(*argv, env=env, cwd=rootfs, start_new_session=True)
        waiting = asyncio.ensure_future(pod.process.wait())
        stopping = asyncio.ensure_future(pod.stopped.wait())
        try:
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                await self._terminate(pod)
        finally:
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
        code = pod.process.returncode
        self._collect(workflow, node, outputs, mapped)
        phase = "Succeeded" if code == 0 and not pod.stopped.is_set() else "Failed"
        node.update(phase=phase, finishedAt=_now(), message="" if code == 0 else f"Error (exit code {code})")
        if phase == "Failed" and not status.get("message"):
            status["message"] = node["message"]
        return phase

    def _collect(
        self, workflow: dict[str, Any], node: dict[str, Any], outputs: list[dict[str, Any]], mapped: dict[str, str]
    ) -> None:
        """What the wait container does: the output parameters' files, read after the pod."""
        parameters = []
        for output in outputs:
            path = Path(mapped[output["valueFrom"]["path"]])
            if path.exists():
                parameters.append({"name": output["name"], "value": path.read_text()})
                if output.get("globalName"):
                    status = workflow["status"]
                    status.setdefault("outputs", {"parameters": []})["parameters"] = [
                        p for p in status.get("outputs", {}).get("parameters", []) if p["name"] != output["globalName"]
                    ] + [{"name": output["globalName"], "value": path.read_text()}]
        if parameters:
            node["outputs"] = {"parameters": parameters}

    async def _terminate(self, pod: _Pod) -> None:
        """SIGTERM to the pod's processes, SIGKILL after the grace period, as the kubelet does."""
        process = pod.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), KILL_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@contextlib.asynccontextmanager
async def running(token: str = "") -> AsyncIterator[FakeArgo]:
    fake = await FakeArgo(token).start()
    try:
        yield fake
    finally:
        await fake.stop()
