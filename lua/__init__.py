# Installed as the `engine.lua` package (see pyproject package-dir) so that
# resv.lua ships as package data: importlib.resources.files("engine.lua").
