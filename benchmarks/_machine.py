"""What every benchmark records about the machine it ran on, and how it writes its JSON.

Benchmarks compare implementations side by side in one run; the ratios still
depend on the CPU (``mixed_bfloat16`` is a speed-up on some CPUs and a slow-down
on others) and on the load from other processes, so both go in the results.
"""

from __future__ import annotations

import json
import os
import platform

# Quiet TensorFlow's start-up logs: benchmarks import this module before TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def define_common_flags(name: str, quick_help: str = "Tiny configuration for a smoke test.") -> None:
    """Defines ``--quick`` and ``--output`` (default ``benchmarks/results/<name>.json``)."""
    from absl import flags

    flags.DEFINE_bool("quick", False, quick_help)
    flags.DEFINE_string(
        "output", os.path.join(os.path.dirname(__file__), "results", f"{name}.json"), "Where to write the JSON results."
    )


def _first_cpu_info() -> dict:
    """``/proc/cpuinfo``'s fields for the first CPU (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def machine_facts(**versions) -> dict:
    """Platform, CPU model and bf16 instruction sets, core count, oneDNN switch, 1-minute load average, versions.

    Args:
        **versions: library name -> version string, e.g. ``tensorflow=tf.__version__``.
    """
    cpu = _first_cpu_info()
    cpu_flags = cpu.get("flags", "").split()
    return dict(
        platform=platform.platform(),
        cpu_model=cpu.get("model name") or platform.processor(),
        # Virtual machines often report a bare "AMD EPYC": vendor, family and model number pin the generation.
        cpu_id=f"{cpu.get('vendor_id', '?')} family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}",
        cpu_avx512_bf16="avx512_bf16" in cpu_flags,
        cpu_amx_bf16="amx_bf16" in cpu_flags,
        cpus=os.cpu_count(),
        # TensorFlow's oneDNN kernels: on by default only on CPUs with AVX-512 VNNI / BF16 / AMX;
        # elsewhere TF_ENABLE_ONEDNN_OPTS=1 turns them on (docs/benchmarks.md#onednn).
        tf_enable_onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
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
