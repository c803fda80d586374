"""What every benchmark records about the machine it ran on, and how it writes its JSON.

Benchmarks compare implementations side by side in one run; the ratios still
depend on the CPU (``mixed_bfloat16`` is a speed-up on some CPUs and a slow-down
on others) and on the load from other processes, so both go in the results.
"""

from __future__ import annotations

import json
import os
import platform


def _cpuinfo_field(lines, name):
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")


def machine_facts(**versions) -> dict:
    """Platform, CPU model and bf16 instruction sets, core count, 1-minute load average, library versions.

    Args:
        **versions: library name -> version string, e.g. ``tensorflow=tf.__version__``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    cpu_flags = _cpuinfo_field(lines, "flags").split()
    return dict(
        platform=platform.platform(),
        cpu_model=_cpuinfo_field(lines, "model name") or platform.processor(),
        cpu_avx512_bf16="avx512_bf16" in cpu_flags,
        cpu_amx_bf16="amx_bf16" in cpu_flags,
        cpus=os.cpu_count(),
        load_average_before=os.getloadavg()[0],
        **versions,
    )


def write_json(result: dict, path: str) -> None:
    """Adds the load average at the end to ``result["machine"]`` and writes ``result`` to ``path``."""
    result["machine"]["load_average_after"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
