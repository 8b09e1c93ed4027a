# Installed as the `resv.lua` package (see pyproject package-dir) so that
# resv.lua ships as package data: importlib.resources.files("resv.lua").
