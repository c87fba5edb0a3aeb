"""Artifact push throughput: a 200 MB binary artifact, Forge's worker path against the oras CLI.

    .venv/bin/python -m bench.artifacts [--size-mb 200] [--rounds 3]

Needs Debian's ``docker-registry`` (started on loopback, storage in a temporary directory); the
``oras`` CLI is measured when it is on PATH (else the report says it was not: it is a Go program
that neither Debian bookworm nor PyPI ships; see docs/performance.md for how it was measured),
and Debian's ``skopeo`` (the Go
containers/image library) when installed, copying the same content from an OCI layout. Each
round pushes to a fresh repository, so no blob is already there. Measured:

* ``forge``: what an artifact job does after the build: package the file (hash it, write the
  manifest) and push the blobs and manifest with ``forge_common.oci.RegistryStore`` (oras-py's
  session; the blob is streamed from the file in one ``PUT``);
* ``forge (embedded layout)``: the same into the on-disk OCI layout (the default without a
  registry): hash, copy, verify;
* ``oras push``: the oras CLI pushing the same file to the same registry (``--plain-http``);
* ``skopeo copy``: the same artifact (the embedded layout written above) copied to the registry.

Throughput is the file's size over the wall time of the whole push (median of the rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forge_common.oci import LayoutStore, RegistryStore
from forge_dev.stack import free_port, wait_http
from forge_worker.packaging import package


def _random_file(path: Path, size_mb: int) -> None:
    with path.open("wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1024 * 1024))


def _registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("bench.artifacts needs Debian's docker-registry (apt-get install docker-registry)")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v2/", 30, proc, "docker-registry")
    return proc, f"127.0.0.1:{port}"


def _forge(host: str, file: Path, scratch: Path, repository: str) -> tuple[float, float]:
    """Whole push (hash + package + upload), and the upload alone."""
    started = time.perf_counter()
    packaged = package("binary", "bench", file, scratch)
    uploading = time.perf_counter()
    RegistryStore(host).push(repository, "v1", packaged.blobs, packaged.manifest, packaged.media_type)
    done = time.perf_counter()
    return done - started, done - uploading


def _layout(root: Path, file: Path, scratch: Path, repository: str) -> float:
    started = time.perf_counter()
    packaged = package("binary", "bench", file, scratch)
    LayoutStore(root).push(repository, "v1", packaged.blobs, packaged.manifest, packaged.media_type)
    return time.perf_counter() - started


def _oras(oras: str, host: str, file: Path, repository: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [oras, "push", "--plain-http", f"{host}/{repository}:v1", f"{file.name}:application/octet-stream"],
        cwd=file.parent,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _skopeo(skopeo: str, layout: Path, host: str, repository: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [skopeo, "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{host}/{repository}:v1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    oras = shutil.which("oras")
    skopeo = shutil.which("skopeo")
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        root = Path(tmp)
        proc, host = _registry(root)
        try:
            file = root / "artifact.bin"
            results: dict[str, list[float]] = {
                "forge (registry)": [],
                "forge (registry, upload only)": [],
                "forge (embedded layout)": [],
            }
            if oras:
                results["oras push (CLI)"] = []
            if skopeo:
                results["skopeo copy (CLI)"] = []
            for round_ in range(args.rounds):
                for label in [k for k in results if k != "forge (registry, upload only)"]:
                    # New content for every push: a registry mounts a blob it already holds
                    # (skopeo does) instead of uploading it, which would measure nothing.
                    _random_file(file, args.size_mb)
                    scratch = Path(tempfile.mkdtemp(dir=root, prefix="scratch-"))
                    repository = f"bench/{label.split()[0]}-{round_}-{time.monotonic_ns()}"
                    if label == "forge (registry)":
                        whole, upload = _forge(host, file, scratch, repository)
                        results[label].append(whole)
                        results["forge (registry, upload only)"].append(upload)
                        continue
                    if label == "forge (embedded layout)":
                        seconds = _layout(root / "layout", file, scratch, repository)
                    elif label.startswith("skopeo"):
                        assert skopeo is not None
                        _layout(root / "source", file, scratch, "image")  # not timed: skopeo's input
                        seconds = _skopeo(skopeo, root / "source" / "image", host, repository)
                    else:
                        assert oras is not None
                        seconds = _oras(oras, host, file, repository)
                    results[label].append(seconds)
            size_mb = file.stat().st_size / 1e6
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"push of a {size_mb:.0f} MB binary artifact to docker-registry on loopback, {args.rounds} rounds")
    print(f"{'client':<32}{'median s':>10}{'MB/s':>10}")
    for label, times in results.items():
        median = statistics.median(times)
        print(f"{label:<32}{median:>10.2f}{size_mb / median:>10.1f}")
    if oras:
        version = subprocess.run([oras, "version"], capture_output=True, text=True, check=False).stdout
        print(f"oras CLI: {oras}, {version.splitlines()[0] if version else 'version unknown'}")
        reference = statistics.median(results["oras push (CLI)"])
        for label in ("forge (registry)", "forge (registry, upload only)"):
            print(f"{label} at {100 * reference / statistics.median(results[label]):.0f}% of oras push's throughput")
    else:
        print("oras CLI: not on PATH (not measured; see docs/performance.md)")


if __name__ == "__main__":
    main()
