"""One module per sub-command family; each has ``register(subparsers)`` adding its parsers, whose
``func`` default is the function the CLI calls. Adding a command is adding a module and one line here."""
COMMAND_MODULES = (
    "edgekit.commands.generate",
    "edgekit.commands.evaluate",
    "edgekit.commands.calibrate",
    "edgekit.commands.export",
    "edgekit.commands.compress",
    "edgekit.commands.policy",
    "edgekit.commands.bench",
    "edgekit.commands.serve",
    "edgekit.commands.sign",
    "edgekit.commands.quantize",
    "edgekit.commands.package",
)
