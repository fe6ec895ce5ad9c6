"""`make demo-data`: write the embedded, clearly synthetic demo class (no download, seconds)."""

from __future__ import annotations

from fast_lightning.commands.arguments import pop_options
from fast_lightning.data.demo_dataset import DEMO_CLASS, DEMO_ROOT, generate_demo_dataset

OPTIONS = {"root": DEMO_ROOT, "seed": 0, "overwrite": False}
TAKES_CONFIG = False  # --help lists no config keys


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    if rest:
        from fast_lightning.errors import UserError

        raise UserError(f"demo-data takes root=, seed=, overwrite=true; got {' '.join(rest)}")
    path = generate_demo_dataset(opts["root"], seed=int(opts["seed"]), overwrite=bool(opts["overwrite"]))
    print(f"demo dataset (synthetic, procedural) ready: {path}  -> use DATA={opts['root']} CLASS={DEMO_CLASS}")
    return 0
