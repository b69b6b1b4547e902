"""What gets published: one abi3 wheel tagged manylinux_2_28 or older, and an sdist, both with
LICENSE; the wheel carries what the tests and users need and links no vendor library; the minimum
Rust version the docs state is the one Cargo.toml declares.

The checks on built files run when ``DIST_UNDER_TEST`` names the folder scripts/build-dist.sh
wrote (scripts/test-wheel.sh sets it, running this suite against the installed wheel). Not a
``CARBONCTX_*`` name: those are carbonctx's settings, and conftest clears them for every test."""

from __future__ import annotations

import email.parser
import os
import re
import struct
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import carbonctx

REPO = Path(__file__).resolve().parents[1]
DIST = os.environ.get("DIST_UNDER_TEST")
needs_dist = pytest.mark.skipif(not DIST, reason="DIST_UNDER_TEST not set (scripts/test.sh)")

OLDEST_GLIBC_TAG = (2, 28)  # PyTorch's wheels need glibc 2.28; ours must load wherever they do
LEGACY_TAGS = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# Libraries every manylinux system has (PEP 600); anything else would have to be bundled.
SYSTEM_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}


def _sources(top: str) -> list[str]:
    """Files under a source folder, as committed (no caches, builds or compiled modules)."""
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / top).rglob("*")
        if p.is_file()
        and not {"__pycache__", "target"} & set(p.parts)
        and p.suffix not in {".so", ".pyc"}
    )


def _one(pattern: str) -> Path:
    assert DIST is not None
    found = sorted(Path(DIST).glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {DIST}, found {found}"
    return found[0]


def _glibc_of(platform_tag: str) -> tuple[int, int]:
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", platform_tag)
    if m:
        return int(m[1]), int(m[2])
    legacy = platform_tag.split("_", 1)[0]
    assert legacy in LEGACY_TAGS, f"not a manylinux tag: {platform_tag}"
    return LEGACY_TAGS[legacy]


def _needed(elf: bytes) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1, "not a 64-bit LE ELF file"
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dynamic[6]]  # sh_link: the string table of the dynamic section
    names = []
    for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, val = struct.unpack_from("<qQ", elf, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + val
            names.append(elf[start : elf.index(b"\0", start)].decode())
    return names


@needs_dist
def test_one_abi3_wheel_tagged_manylinux_2_28_or_older() -> None:
    wheel = _one("*.whl")
    name, version, python, abi, platforms = wheel.stem.split("-")
    assert (name, version) == ("carbonctx", carbonctx.__version__)
    assert (python, abi) == ("cp310", "abi3"), wheel.name
    for platform_tag in platforms.split("."):
        assert _glibc_of(platform_tag) <= OLDEST_GLIBC_TAG, wheel.name
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"carbonctx-{version}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in meta
    tags = {line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Tag: ")}
    assert tags == {f"cp310-abi3-{p}" for p in platforms.split(".")}


@needs_dist
def test_the_wheel_carries_the_licence_and_what_the_tests_need() -> None:
    wheel = _one("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"carbonctx-{carbonctx.__version__}.dist-info"
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        licence = z.read(f"{info}/licenses/LICENSE").decode()
        (native,) = [n for n in names if n.startswith("carbonctx/_native") and n.endswith(".so")]
        needed = _needed(z.read(native))
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert licence == (REPO / "LICENSE").read_text(encoding="utf-8")
    for what in ("CC BY 4.0", "Ember", "CodeCarbon", "Apache License"):
        assert what in licence
    # Everything in the package folder, not only modules: the stub, py.typed, the data tables, and
    # the stand-in NVML source that carbonctx.testing compiles at run time.
    missing = [f for f in _sources("python/carbonctx") if f.removeprefix("python/") not in names]
    assert not missing, f"missing from {wheel.name}: {missing}"
    assert {"carbonctx/py.typed", "carbonctx/_native.pyi"} <= names
    assert native.endswith(".abi3.so")
    # NVML is opened at run time (dlopen) where it exists; linking it would break every machine
    # without an NVIDIA driver.
    assert set(needed) <= SYSTEM_LIBS, needed


@needs_dist
def test_the_sdist_carries_the_licence_and_the_sources_to_build() -> None:
    sdist = _one("*.tar.gz")
    top = f"carbonctx-{carbonctx.__version__}"
    with tarfile.open(sdist) as t:
        names = set(t.getnames())
        pkg_info = t.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        meta = email.parser.Parser().parsestr(pkg_info.read().decode())
    assert meta.get_all("License-File") == ["LICENSE"]
    wanted = ["LICENSE", "README.md", "pyproject.toml", "Cargo.toml", "Cargo.lock"]
    # With data/; without the sampler's simulated sysfs trees, whose dangling links named as the
    # kernel names them (intel-rapl:0) no package can carry (rust/sampler/Cargo.toml excludes them).
    fixtures = "rust/sampler/tests/fixtures/"
    wanted += _sources("python/carbonctx")
    wanted += [f for f in _sources("rust") if not f.startswith(fixtures)]
    missing = [f for f in wanted if f"{top}/{f}" not in names]
    assert not missing, f"missing from {sdist.name}: {missing}"
    assert not [n for n in names if n.startswith(f"{top}/{fixtures}")]


@needs_dist
def test_carbonctx_is_imported_from_the_installed_wheel() -> None:
    site = sysconfig.get_paths()["platlib"]
    assert carbonctx.__file__ is not None
    assert carbonctx.__file__.startswith(site), (carbonctx.__file__, sys.path)


def test_the_stated_minimum_rust_is_cargos() -> None:
    cargo = (REPO / "Cargo.toml").read_text(encoding="utf-8")
    section = cargo.split("[workspace.package]", 1)[1].split("\n[", 1)[0]
    m = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)"', section, re.M)
    assert m, "no rust-version in [workspace.package]"
    declared = (int(m[1]), int(m[2]))
    stated = {
        doc: [(int(a), int(b)) for a, b in re.findall(r"Rust[^.\n]{0,24}?≥\s*(\d+)\.(\d+)", text)]
        for doc in ("README.md", "CONTRIBUTING.md")
        for text in [(REPO / doc).read_text(encoding="utf-8")]
    }
    assert stated["CONTRIBUTING.md"], "CONTRIBUTING.md states no minimum Rust (Rust ≥ X.Y)"
    for doc, versions in stated.items():
        for v in versions:
            assert v == declared, f"{doc} says Rust ≥ {v}, Cargo.toml says {declared}"
