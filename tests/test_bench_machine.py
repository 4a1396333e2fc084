"""benchmarks/harness.py names the machine's CPU in every report, from /proc/cpuinfo."""

from __future__ import annotations

from benchmarks.harness import cpu_description

_TWO_CPUS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2
cpu MHz\t\t: 2100.000
cache size\t: 307200 KB

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Another Processor
"""


def test_the_first_cpu_is_described_by_its_model_and_cache() -> None:
    assert cpu_description(_TWO_CPUS) == (
        "Intel(R) Xeon(R) Processor (family 6, model 207, stepping 2, MHz 2100.000, "
        "cache 307200 KB)")


def test_a_cpuinfo_without_a_model_name_is_unknown() -> None:
    assert cpu_description("processor\t: 0\nfeatures\t: fpu\n") == "unknown"
    assert cpu_description("") == "unknown"

