# `python -m gateway` is an entry point, not an import: the command (its flags) lives in cli/gateway.py with
# every other command, and nothing in gateway/ imports cli/.
from cli.gateway import main

main()
