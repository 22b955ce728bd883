"""The `routoo` command line: each module parses one group of commands and calls into the packages below
(main.py assembles them). Nothing below imports this package."""
