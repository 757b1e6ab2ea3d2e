"""Old entry point, kept as an alias: ``python -m framer.models.benchmark`` runs ``python -m framer.bench``.

Without arguments it measures Crystalformer and CrystalFramer on the reference batch only
(``--presets crystalformer crystalframer --only ref``). The old ``--preset`` flag is accepted for ``--presets``;
``--atoms`` is ignored (the reference batch is fixed). See :mod:`framer.bench` for everything else.
"""

from __future__ import annotations

import sys


def translate(argv: list[str]) -> list[str]:
    """Old flags to ``framer.bench`` flags."""
    out: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--atoms" or arg.startswith("--atoms="):
            skip = arg == "--atoms" and index + 1 < len(argv)
            print("framer.models.benchmark: --atoms is ignored (the reference batch has 268 atoms)", file=sys.stderr)
            continue
        out.append("--presets" if arg == "--preset" else arg)
    if not any(a.startswith("--presets") for a in out):
        out = ["--presets", "crystalformer", "crystalframer", *out]
    if not any(a.startswith("--only") for a in out):
        out += ["--only", "ref"]
    return out


def main(argv: list[str] | None = None) -> int:
    from framer.bench.__main__ import main as bench_main

    return bench_main(translate(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
