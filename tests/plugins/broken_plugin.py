"""A plugin module that fails at import (tests: run.plugins=[plugins.broken_plugin] is a config error)."""

raise RuntimeError("this plugin is broken on purpose")
