from vlmbias.io import run_cli
from vlmbias.plots import main

raise SystemExit(run_cli(main))
