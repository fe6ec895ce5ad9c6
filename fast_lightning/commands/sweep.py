"""`make sweep SWEEP=<yaml> [TRIALS CLASS DATA PROFILE ARGS]`: register a W&B sweep and run an agent here.

W&B's server proposes the trials, so this needs a reachable server and a login; both are checked first
(a few seconds at most) and, when missing, the command stops with what to do instead of hanging or
silently logging offline. The sweep file is validated exactly like sweep-local's (same loader), and
CLASS/DATA/PROFILE/ARGS are registered as fixed parameters, so every trial the agent starts is
`<command> key=value ...` with the class and data it needs.
"""

from __future__ import annotations

import os
import sys

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import pop_options
from fast_lightning.commands.sweep_file import load_sweep, trial_env

OPTIONS = {"sweep": "", "trials": 0, "project": "", "entity": "", "timeout": 20}
NO_SERVER_MODES = ("offline", "disabled", "dryrun")


def _no_server(reason: str, sweep: str) -> UserError:
    file = sweep or "experiments/sweeps/<name>.yaml"
    return UserError(
        f"W&B sweeps need the W&B server, and {reason}.\n"
        f"  - to use W&B: run `.venv/bin/wandb login` (or export WANDB_API_KEY), then "
        f"`WANDB_MODE=online make sweep SWEEP={file} ...`\n"
        f"  - without a server: `make sweep-local SWEEP={file} TRIALS=<n> CLASS=<c> DATA=<root>` runs the same "
        "file with the sweeps package (random/grid/bayes) and offline W&B logs"
    )


def check_wandb(sweep: str, timeout: int) -> None:
    """Raise a UserError saying why W&B cannot run a sweep here; return when it can."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in NO_SERVER_MODES:
        raise _no_server(f"WANDB_MODE={mode} is set", sweep)
    import wandb
    from wandb.errors import UsageError

    try:
        wandb.Api(timeout=int(timeout))  # verifies the API key against the server
    except UsageError as exc:
        raise _no_server(f"you are not logged in ({exc})", sweep) from exc
    except Exception as exc:  # network, DNS, proxy, wrong host, rejected key
        raise _no_server(f"the server could not be reached or refused the login "
                         f"({type(exc).__name__}: {str(exc)[:300]})", sweep) from exc


def main(args: list[str]) -> int:
    opts, overrides = pop_options(args, OPTIONS)
    spec = load_sweep(opts["sweep"], overrides)  # fail on a bad file before touching the network
    check_wandb(opts["sweep"], int(opts["timeout"]))
    import wandb

    w = spec.base.logger.wandb
    project = opts["project"] or str(w.project)
    entity = opts["entity"] or (str(w.entity) if w.entity else None)
    # trials are subprocesses of the agent: they must log online (the config default is offline), find this
    # venv's python for ${interpreter} and import the project
    os.environ.update(trial_env())
    os.environ["WANDB_MODE"] = "online"
    sweep_id = wandb.sweep(sweep=spec.config, project=project, entity=entity)
    count = int(opts["trials"]) or None
    print(f"[sweep] {spec.path}: registered sweep {sweep_id} in {entity + '/' if entity else ''}{project} "
          f"(method {spec.method}, metric {spec.metric} {spec.goal}); starting an agent for "
          f"{count or 'unlimited'} trial(s). More agents: `.venv/bin/wandb agent "
          f"{entity + '/' if entity else ''}{project}/{sweep_id}`", flush=True)
    wandb.agent(sweep_id, project=project, entity=entity, count=count)
    sys.stdout.flush()
    return 0
