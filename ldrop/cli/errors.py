"""Every failure a user can fix, as one line: jsonargparse's nested parse errors, instantiation errors, OS
errors and ldrop's own exceptions (:func:`user_error_line`); ``main`` prints it with exit status 2."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib
import inspect
import os
import re
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch.callbacks
from jsonargparse import ArgumentError, ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException

import ldrop.data
import ldrop.selectors
import ldrop.tasks
from ldrop._io import DISK_ERRNOS, CheckpointError, disk_errno, disk_error_message, exception_chain
from ldrop._lightning import parser_actions
from ldrop.data.audio import AudioReadError
from ldrop.data.base import DatasetLayoutError
from ldrop.data.batch import AudioBatch, BatchTypeError, batch_type_problem
from ldrop.runtime.checkpoints import import_failure, read_config_file
from ldrop.runtime.onnx_runtime import MissingExtraError
from ldrop.sweeps.report import IncompleteSweepError

#: Options that only 'ldrop predict' takes: the other subcommands neither list nor accept them.
PREDICT_ONLY = ("predictions", "inputs")


class ConfigError(Exception):
    """A bad argument or configuration; ``main`` prints it as one line (exit status 2). Public: a downstream
    DataModule or task raises it for a bad setting (``DatasetLayoutError`` for missing or misplaced files)."""


class InstantiationError(ConfigError):
    """Building a class given on the command line or in a config failed; the message is the whole report (a
    ``DatasetLayoutError`` raised in an ``__init__`` keeps its expected layout on the lines after)."""


#: jsonargparse's message for an error raised by the function of a link (``model_labels`` reading the
#: datamodule's class names): the real error is its ``__cause__``; the message dumps the arguments.
LINK_FAILURE = re.compile(r"Call to compute_fn of link '([^']*)' with args \(")


def linked_cause(err: BaseException) -> tuple[str, BaseException] | None:
    """``(link, error)`` when ``err`` is, or was raised from, the failure of a link's function (jsonargparse
    wraps whatever it raised); the innermost such failure."""
    found = None
    for seen in exception_chain(err):
        match = LINK_FAILURE.match(str(seen))
        if match and seen.__cause__ is not None:
            found = (match.group(1), seen.__cause__)
    return found


def instantiation_error_line(err: BaseException) -> str:
    """The reason in an instantiation error, without jsonargparse's union preamble and Namespace dump: for
    the failure of a link's function (the datamodule reading its class names), the real error's own line,
    as :func:`user_error_line` reports it (a :class:`DatasetLayoutError` with its expected layout). An
    exception a class's ``__init__`` raised is reported as :func:`user_error_line` reports it when a user can
    fix it (a ``ConfigError``, a ``DatasetLayoutError`` with its layout lines), else as the class, the
    exception's type and message, and where it was raised."""
    if (linked := linked_cause(err)) is not None:
        link, cause = linked
        return user_error_line(cause) or f"{link} failed: {type(cause).__name__}: {_first_line(cause)}"
    if (raised := _raised_by_a_class(err)) is not None:
        return user_error_line(raised) or _class_failure_line(err, raised)
    text = str(err)
    # a reason with its indented continuation lines ("Problem with given class_path 'X':" then the reason)
    errors = text.split("Errors:", 1)[1] if "Errors:" in text else ""
    reasons = re.findall(r"^\s+- (.+(?:\n\s{4,}\S.*)*)$", errors, flags=re.M)
    reasons = [" ".join(r.split()) for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return "; ".join(reasons) if reasons else text.splitlines()[0] if text else type(err).__name__


def _exception_chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from (``__cause__``, else ``__context__`` unless ``raise ... from
    None`` suppressed it), outermost first."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return chain


def _innermost_frame(err: BaseException) -> Any:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_a_class(err: BaseException) -> BaseException | None:
    """The exception that building a class raised (in its ``__init__`` or below: the outermost one that
    jsonargparse wrapped in its own errors, as the class raised it, whatever it was raised from); ``None`` for
    jsonargparse's own (a value of the wrong type) and for ldrop's own argument checks, whose message says it."""
    for raised in _exception_chain(err):
        tb = _innermost_frame(raised)
        if tb is not None and os.sep + "jsonargparse" + os.sep not in os.path.abspath(tb.tb_frame.f_code.co_filename):
            return None if _raised_in_ldrop(raised) and isinstance(raised, ValueError | TypeError) else raised
    return None


def _class_failure_line(err: BaseException, raised: BaseException) -> str:
    """``building mylab.Task raised AttributeError: 'Task' object has no attribute 'x' (in configure_head,
    mylab/tasks.py:12)``; for an attribute read before the base class's ``__init__`` that reads it was given it,
    what to do."""
    paths = [found for e in _exception_chain(err) for found in re.findall(r"class_path[ =]'([^']+)'", str(e))]
    what = f"building {paths[0]}" if paths else "building a class given on the command line or in a config"
    entry = _frame_to_name(raised, paths[0].split(".")[0] if paths else None)
    frame, where = entry.tb_frame if entry is not None else None, ""
    if entry is not None:
        path = Path(frame.f_code.co_filename)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(Path.cwd())
        where = f" (in {frame.f_code.co_name}, {path}:{entry.tb_lineno})"
    line = f"{what} raised {type(raised).__name__}: {_first_line(raised)}{where}"
    if isinstance(raised, AttributeError) and frame is not None and frame.f_code.co_name != "__init__" \
            and isinstance(getattr(raised, "name", None), str) and getattr(raised, "obj", None) is not None \
            and _inside_a_base_init(raised):
        line += f": set self.{raised.name} before super().__init__(), which calls {frame.f_code.co_name}()"
    read_only = re.match(r"property '(\w+)' of '\w+' object has no setter", str(raised))
    instance = frame.f_locals.get("self") if frame is not None else None
    owner = next((k for k in type(instance).__mro__ if isinstance(vars(k).get(read_only[1]), property)), None) \
        if read_only and instance is not None else None
    if owner is not None:  # AudioDataModule.num_classes, set by a datamodule as many plain Lightning ones do
        doc = (vars(owner)[read_only[1]].__doc__ or "").strip().split("\n")[0].replace("``", "")
        line += f": {owner.__name__}.{read_only[1]} is read-only" + (f" ({doc.rstrip('.')})" if doc else "")
    return line


def _frame_to_name(raised: BaseException, package: str | None) -> Any:
    """The traceback entry of the innermost frame of ``raised`` in code a user can change: the package of the
    class that was built (``package``), ldrop, or anything outside the standard library and installed packages
    (torch's ``Module.__getattr__`` is where a missing attribute is raised, not where it is read)."""
    libraries = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    own = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # ldrop/
    module = sys.modules.get(package) if package else None  # imported: its class was built
    file = getattr(module, "__file__", None)
    own += list(getattr(module, "__path__", None) or ([os.path.dirname(file)] if file else []))
    frames, tb = [], raised.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    for tb in reversed(frames):
        file = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if any(file.startswith(os.path.abspath(folder) + os.sep) for folder in own) or not any(
                file.startswith(folder + os.sep) for folder in libraries):
            return tb
    return None  # only library frames: no line of the user's to name


def _inside_a_base_init(raised: AttributeError) -> bool:
    """Whether ``raised`` (an attribute missing on the object being built) came from a method that the
    ``__init__`` of one of the object's base classes called, before an ``__init__`` that names the attribute
    (the subclass's, which sets it after ``super().__init__()``) set it."""
    inits = []
    tb = raised.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "__init__" and tb.tb_frame.f_locals.get("self") is raised.obj:
            inits.append(code)
        tb = tb.tb_next
    owners = [k for k in type(raised.obj).__mro__ if getattr(vars(k).get("__init__"), "__code__", None) in inits]
    return len(owners) > 1 and any(raised.name in code.co_names for code in inits)


def option_strings(parser: ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    options = [o for action in parser_actions(parser) for o in action.option_strings]
    for action in parser_actions(parser):
        choices = getattr(action, "choices", None)  # a subcommand's parsers by name; an option's values
        for sub in choices.values() if isinstance(choices, dict) else ():
            if isinstance(sub, ArgumentParser):
                options += option_strings(sub)
    return options


def command_parser(name: str, description: str) -> ArgumentParser:
    """The parser of one of ldrop's own commands: no abbreviated options, errors raised (as one line)."""
    return ArgumentParser(prog=f"ldrop {name}", description=description, allow_abbrev=False, exit_on_error=False)


def parse_command(parser: ArgumentParser, argv: Sequence[str]) -> Any:
    """``parser.parse_args(argv)``, a bad argument raised as a one-line :class:`ConfigError`."""
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        raise ConfigError(argument_error_line(str(err), list(argv), option_strings(parser))) from err


def nested_option_line(err: BaseException, line: str, argv: Sequence[str] = ()) -> str:
    """``line``, or where it only says that a class option's value is not a class (``--model "{...}": expected a
    LayerDropTask or null``), the option inside it that the class does not take, from the reason jsonargparse keeps
    in ``err``'s chain (a typo inside a typed group such as ``optimization``: ``--model.init_args.optimization.lrr``)."""
    owner = re.match(r"--(\w+)[\w.]* .*: expected an? \w+ or null$", line)
    for seen in exception_chain(err) if owner else ():
        problem = re.match(r"Problem with given class_path '([^']+)':\s+(.+)", str(seen), flags=re.S)
        reason = problem and (re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", problem[2])
                              or re.match(r"unrecognized arguments: --([\w.]+)()", problem[2]))
        if reason:
            key = ".".join(filter(None, reason.groups()))
            command = argv[0] if argv and not str(argv[0]).startswith("-") else "fit"
            name = problem[1].rsplit(".", 1)[-1]
            where = _option_as_typed(f"{owner[1]}.init_args.{key}", argv)  # '--...' as typed, or the config file's
            where = f"--{owner[1]}.init_args.{key}" if where.startswith("--") else where
            return (f"{where}: {name} has no option {key!r} (its options: 'ldrop {command} "
                    f"--{owner[1]}.help {name}')")
    return line


def argument_error_line(message: str, argv: Sequence[str] = (), options: Sequence[str] = ()) -> str:
    """jsonargparse's nested parse error as one line: the option as typed, its value, and what is accepted.

    jsonargparse reports an error inside a subclass as a failure of ``model`` with the real reason nested; the
    innermost reason and outermost nested key are what a user can act on. ``options`` (the parser's) suggest
    one for an unrecognised option.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "bad arguments"
    command = argv[0] if argv and not str(argv[0]).startswith("-") else "fit"
    # --X.help with a class that does not resolve: a misspelt name or dotted path, a class of another kind
    if (helped := re.search(r"--([\w.]+)\.help: (?:Expected a dot import path string|module '|No module named)",
                            message)) and (value := _option_value(argv, f"{helped[1]}.help")):
        typed = next(str(t).split("=")[0] for t in argv if str(t).split("=")[0].endswith(f"{helped[1]}.help"))
        if "." in value:
            return f"{typed} {value!r}: {_class_path_problem(value) or 'not a class that option takes'}"
        kind = {"model": ldrop.tasks, "selector": ldrop.selectors, "data": ldrop.data,
                "callbacks": lightning.pytorch.callbacks}.get(helped[1].rsplit(".")[-1])
        if kind is not None and _closest_class_name(value, 1.0) == value:
            return f"{typed} {value!r}: not a class of {kind.__name__}, which that option takes"
        guess = _closest_class_name(value, modules=(kind,) if kind else None)
        return (f"{typed} {value!r}: no such class" + (f"; did you mean {guess}?" if guess else "")
                + " (give a class name, or the dotted import path of a class of your own)")
    # --model CLASS --model.early_exit.help: a nested help is an option of the class's help, not of --model
    owner = next(filter(None, re.match(r"argument --(\w+): expected one|Parser key \"(\w+)\"|", lines[0]).groups()), "")
    nested = [t.split("=")[0] for t in map(str, argv) if owner and re.fullmatch(rf"--{owner}\.[\w.]+\.help(=.*)?", t)]
    if nested and (cls := _option_value(argv, f"--{owner}")) is not None:
        return f"{nested[0]} follows --{owner}.help, not --{owner}: 'ldrop {command} --{owner}.help {cls} {nested[0]}'"
    if lines[0].lower().startswith("unrecognized arguments"):
        given = [t.split("=", 1)[0] for t in lines[0].split(":", 1)[-1].split() if t.startswith("--")]
        predict_only = [t for t in given if t.lstrip("-").split(".")[0] in PREDICT_ONLY]
        if predict_only:
            return f"{predict_only[0]} applies to 'ldrop predict' only"
        guesses = difflib.get_close_matches(given[0], options, n=1, cutoff=0.8) if given else []
        return lines[0] + (f"; did you mean {guesses[0]}? (options are never abbreviated)" if guesses else "")
    unknown = re.match(r"Subcommand '(\w+)' does not accept option '([\w.]+)'$", lines[0])
    if unknown and (located := _in_config_file(unknown[2], argv)):  # an unknown key in a config file
        guesses = difflib.get_close_matches(f"--{unknown[2]}", options, n=1, cutoff=0.8)
        return f"{located}: not an option of {unknown[1]}" + (f" (did you mean {guesses[0][2:]}?)" if guesses else "")
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return " ".join(lines[:2])[:300]
    nested = re.findall(r"Given value: NestedArg\(key='([^']*)', val='(.*)'\)$", message, flags=re.M)
    values = re.findall(r"^\s*Given value: (?!NestedArg\(|Namespace\()(.*)$", message, flags=re.M)
    # the outermost level names the whole key (model + selector.init_args.mode) and the value as given
    key, value = (f"{keys[0]}.{nested[-1][0]}", nested[-1][1]) if nested else (keys[0], values[-1] if values else None)
    option = _option_as_typed(key, argv, value)
    given = f"{option} {value!r}" if value is not None else option
    # a section of a config file (a dict): the key inside it, as written in the file
    section = not nested and value is not None and value.startswith("{")
    classes = re.findall(r"class_path[ =]'([^']+)'", message)
    if key.endswith(".help") and "." in key.removesuffix(".help") and not classes:  # --model.selector.help X
        return (f"{given}: choose the class of --{keys[0]} first (--{keys[0]} CLASS {option} ..., "
                f"or a --config that sets it)")
    not_accepted = re.search(r"Option '([^']+)' is not accepted", message)
    required = re.search(r"class_path '([^']+)':\s+the following arguments are required: (.+)$", message, flags=re.M)
    if required:  # '--trainer.callbacks+=EarlyStopping' without its monitor
        missing = ", ".join(f"--{key}.{name.strip()}" for name in required[2].split(","))
        return f"{option} {required[1].rsplit('.', 1)[-1]}: missing required {missing}"
    if not_accepted and classes and classes[0].rsplit(".", 1)[-1] in re.findall(r"(\w+)'>", message):
        # jsonargparse tried the group's base class itself (--lr_scheduler.step_size 1 without --lr_scheduler X)
        return (f"{given}: no class was given for --{keys[0]}: choose one first (--{keys[0]} CLASS; "
                f"'ldrop {command} --{keys[0]}.help CLASS' lists its options)")
    typed = not_accepted and re.search(rf'Parser key "{re.escape(not_accepted[1])}":\s+Expected an? (.+?)\. Got value',
                                       message)
    if typed:  # the class given takes the option, its value is wrong (the base class tried after it does not)
        return f"{given}: expected {_accepted([typed[1]])}"
    if not_accepted:
        # the class given, not the group's base class that jsonargparse tried after it (--trainer.callbacks)
        direct = re.search(rf"class_path '([^']+)':\s+Option '{re.escape(not_accepted[1])}' is not accepted", message)
        owner = ([direct[1]] if direct else re.findall(r"class_path[ =]'([^']+)'", message[
            not_accepted.start() - 400: not_accepted.end() + 400]) or classes or [keys[0]])[-1].rsplit(".", 1)[-1]
        bases = set(re.findall(r"(\w+)'>", message))
        if section and (deep := _key_in_section(message[:not_accepted.start()], not_accepted[1], None, argv)):
            key, given = deep
        chain = _help_chain(key.removeprefix("trainer."), [c for c in classes if c.rsplit(".", 1)[-1] not in bases])
        helps = " ".join(f"--{'trainer.' * key.startswith('trainer.')}{k}.help {_help_name(c)}" for k, c in chain)
        return f"{given}: {owner} has no option {not_accepted.group(1)!r} (its options: 'ldrop {command} {helps}')"
    missing = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if missing:
        guess = _closest_class_name(missing.group(1))
        return (f"{option} {missing.group(1)!r}: no such class" + (f"; did you mean {guess}?" if guess else "")
                + " (give a class name, a dotted import path, or null)")
    ambiguous = re.search(r"Multiple subclasses with name (\w+)\. [^:]*: (.+?)\.?$", message, flags=re.M)
    if ambiguous:
        return f"{option}: several classes are named {ambiguous[1]} ({ambiguous[2]}): give its full class path"
    abstract = re.search(r"Expected an instantiatable class, but ([\w.]+) is abstract", message)
    asked = [_import_class(path) for path in re.findall(r"<class '([\w.]+)'>", " ".join(re.findall(r"Subtypes: (.*)", message)))]
    if abstract and inspect.isabstract(found := _import_class(abstract[1])) \
            and any(isinstance(kind, type) and issubclass(found, kind) for kind in asked if kind is not type(None)):
        # a class of the kind asked for with hooks left to implement (jsonargparse says "abstract" of any class)
        return f"{given}: {found.__name__} is abstract: implement {', '.join(sorted(found.__abstractmethods__))}"
    for path_key, class_path in _class_paths(value, key):
        if (problem := _class_path_problem(class_path)) is not None:
            return f"{_option_as_typed(path_key, argv)} {class_path!r}: {problem}"
    innermost = re.search(r"Expected an? (.+?)\. Got value: (.*?)(?:\. Got value: .*)?$", message, flags=re.M)
    subtypes = re.findall(r"Subtypes: \[(.*)\]$", message, flags=re.M)
    if innermost and section and (deep := _key_in_section(message[:innermost.start()], None, innermost[2], argv)):
        given = f"{deep[1]} {innermost[2]!r}"
    if innermost or subtypes:
        return f"{given}: expected {_accepted([innermost.group(1)] if innermost else _split_types(subtypes[-1]))}"
    return f"{given}: " + lines[-1][:200]


def _class_paths(value: str | None, key: str) -> list[tuple[str, str]]:
    """``(key, class path)`` of each ``class_path`` in a rejected value, outermost first: the value of a
    ``--model.class_path`` option, or a ``model:`` section of a config file (printed as a dict)."""
    if value is None:
        return []
    if key.endswith("class_path"):
        return [(key, value)]
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []

    def walk(item: Any, at: str) -> list[tuple[str, str]]:
        if not isinstance(item, dict):
            return []
        own = [(f"{at}.class_path", item["class_path"])] if isinstance(item.get("class_path"), str) else []
        return own + [pair for name, sub in item.items() if name != "class_path" for pair in walk(sub, f"{at}.{name}")]

    return walk(parsed, key)


def _import_class(class_path: str) -> Any:
    """The class at a dotted ``class_path``, or ``None``."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - only a better message depends on it
        return None


def _class_path_problem(class_path: str) -> str | None:
    """Why ``class_path`` names no class (a misspelt ldrop class, a module that does not import, a name its
    module lacks), or ``None`` if it does."""
    module, _, name = class_path.rpartition(".")
    if not module:
        if _closest_class_name(name, cutoff=1.0):
            return None
        guess = _closest_class_name(name)
        return "no such class" + (f"; did you mean {guess}?" if guess else "") + " (give a class name or a dotted path)"
    try:
        imported = importlib.import_module(module)
    except ImportError as err:
        return import_failure(module, err)
    except Exception as err:  # noqa: BLE001 - the user's module raised while importing; say what
        return f"importing {module} failed: {type(err).__name__}: {err}"
    if isinstance(getattr(imported, name, None), type):
        return None
    classes = [n for n in dir(imported) if isinstance(getattr(imported, n), type)]
    guesses = difflib.get_close_matches(name, classes, n=1, cutoff=0.75)
    return f"{module} has no class {name}" + (f"; did you mean {module}.{guesses[0]}?" if guesses else "")


def _help_name(class_path: str) -> str:
    """How ``--X.help`` takes a class: its name for ldrop's and Lightning's (imported before parsing), the
    dotted path for a class of the user's own (``--model.help mypkg.tasks.MyTask``)."""
    return class_path.rsplit(".", 1)[-1] if class_path.startswith(("ldrop.", "lightning.")) else class_path


def _help_chain(key: str, classes: Sequence[str]) -> list[tuple[str, str]]:
    """The ``--<key>.help <Class>`` options that show the options of the classes along ``key``
    (``model.selector.init_args.x`` with ClassificationTask, InputConditionedSelector)."""
    parts = [p for p in key.split(".") if p != "init_args"]
    return [(".".join(parts[: i + 1]), cls) for i, cls in enumerate(dict.fromkeys(classes)) if i < len(parts)]


def _option_value(argv: Sequence[str], key: str) -> str | None:
    """The value typed for the option that ends with ``key`` (``--model.help X`` or ``--model.help=X``)."""
    for token, following in zip(argv, [*argv[1:], None], strict=True):
        name, _, value = str(token).partition("=")
        if name.startswith("--") and name.endswith(key):
            return value or following
    return None


def _option_as_typed(key: str, argv: Sequence[str], value: str | None = None) -> str:
    """The command-line option that set ``key`` (``model.predict_budget`` may have been typed as
    ``--model.init_args.predict_budget``), else the ``--config`` file that sets it (to ``value``, where given)
    and the key as written there (:func:`_in_config_file`), else ``--key``."""
    parts = [p for p in key.split(".") if p != "init_args"]
    for token in argv:
        name = str(token).split("=", 1)[0]
        if name.startswith("--") and [p for p in name[2:].split(".") if p != "init_args"] == parts:
            return name
    return _in_config_file(key, argv, value) or "--" + key


def _in_config_file(key: str, argv: Sequence[str], value: str | None = None) -> str | None:
    """``"my.yaml: trainer.max_epochs"``: the last ``--config``/``-c`` file in ``argv`` that sets ``key`` (to
    ``value``, as jsonargparse prints it, where given; not to a section, a dict), and the key as written there
    (``init_args`` levels included or left out, a subcommand's section); ``None`` where none does."""
    parts = [p for p in key.split(".") if p != "init_args"]

    def find(node: Any, rest: list[str], written: list[str]) -> list[str] | None:
        if not rest:
            return written if not isinstance(node, dict) and (value is None or str(node) == value) else None
        for name, sub in node.items() if isinstance(node, dict) else ():
            own = [p for p in str(name).split(".") if p != "init_args"]
            if own == rest[: len(own)] and (found := find(sub, rest[len(own):], [*written, str(name)])):
                return found
        return None

    files = [given or following for token, following in zip(argv, [*argv[1:], None], strict=True)
             for option, _, given in [str(token).partition("=")] if option in ("--config", "-c")]
    for file in reversed([f for f in files if f and os.path.isfile(f)]):  # the last one wins
        try:
            config = read_config_file(file)
        except (OSError, ValueError):
            continue
        found = find(config, parts, []) or next(filter(None, (find(config[c], parts, [c]) for c in (
            "fit", "validate", "test", "predict") if c in config)), None)  # given before the subcommand
        if found:
            return f"{file}: {'.'.join(found)}"
    return None


def _key_in_section(message: str, option: str | None, value: str | None, argv: Sequence[str]) -> tuple[str, str] | None:
    """``(key, "my.yaml: model.init_args.x")`` for the option (``option``, else the innermost parser key,
    set to ``value``) that jsonargparse found wrong inside a section of a config file (it names only the
    section, ``model``, and prints it as a dict): the key along the parser keys in ``message``."""
    key = ".".join([*re.findall(r'Parser key "([^"]+)"', message), *filter(None, [option])])
    located = _in_config_file(key, argv, value)
    return (key, located) if located else None


def _split_types(text: str) -> list[str]:
    """``"<class 'int'>, dict[str, typing.Any]"`` -> the top-level items (brackets kept together)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()] if current.strip() else items


def _accepted(types: Sequence[str]) -> str:
    """Types as jsonargparse prints them, in words: ``an int, a float or null``; ``one of 'topk', 'threshold'``."""
    literals: list[str] = []
    words: list[str] = []
    for text in types:
        text = text.strip()
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
        if literal:
            literals += [v for v in _split_types(literal.group(1)) if v not in literals]
            continue
        name = (re.fullmatch(r"<class '([^']+)'>", text) or re.fullmatch(r"(.*)", text)).group(1)
        callable_of = re.search(r"Callable\[.*,\s*([\w.]+)\]$", name)
        if name.endswith("NoneType"):
            word = "null"
        elif name.startswith(("dict", "typing.Dict")):
            word = "a dict"
        elif name.startswith(("list", "typing.List")):
            word = "a list"
        elif callable_of:
            word = f"a {callable_of.group(1).rsplit('.', 1)[-1]} class"
        else:
            short = name.rsplit(".", 1)[-1]
            word = f"an {short}" if short[:1].lower() in "aeiou" else f"a {short}"
        if word not in words:
            words.append(word)
    if literals:
        words.insert(0, "one of " + ", ".join(literals))
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else (words[0] if words else "another value")


def _closest_class_name(name: str, cutoff: float = 0.75, modules: Sequence[Any] | None = None) -> str | None:
    """The ldrop class (of ``modules``; default: selectors, tasks, data) whose name is closest to a misspelt
    ``name`` (``InputConditonedSelector``)."""
    known = [n for module in modules or (ldrop.selectors, ldrop.tasks, ldrop.data) for n in dir(module)
             if isinstance(getattr(module, n), type)]
    matches = difflib.get_close_matches(name.rsplit(".", 1)[-1], known, n=1, cutoff=cutoff)
    return matches[0] if matches else None


def checkpoint_folder_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why the folder ``path``, given as ``what`` (``--ckpt_path``, ``CHECKPOINT``), is not a checkpoint file: an
    ``ldrop export`` folder already (Hugging Face or ONNX), or a folder (with the checkpoints it holds); ``None``
    when ``path`` is not a folder."""
    from ldrop.runtime.onnx_runtime import MANIFEST
    from ldrop.tasks.checkpointing import EXPORT_STATE_FILE

    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / MANIFEST).is_file() or (folder / "config.json").is_file() and (folder / EXPORT_STATE_FILE).is_file():
        return (f"{what} {str(path)!r} is a folder that 'ldrop export' wrote, already an export, not a checkpoint "
                "file: give the .ckpt it was exported from")
    found = [f for f in sorted(folder.glob("*.ckpt")) or sorted(folder.glob("checkpoints/*.ckpt")) if f.is_file()]
    last = next((f for f in found if f.name == "last.ckpt"), found[-1] if found else None)
    return f"{what} {str(path)!r} is a folder, not a checkpoint file" + (
        f": pass one of the {len(found)} .ckpt file(s) it holds, e.g. {last}" if last else
        " (a .ckpt file written by 'ldrop fit')")


def os_error_line(err: OSError) -> str:
    """``"no space left on runs/ldrop (writing last.ckpt)"``, ``"Read-only file system: /mnt/x"``."""
    if err.errno in DISK_ERRNOS:
        if not err.filename and not _names_its_folder(err):  # a writer's that knew no path (a TensorBoard flush
            # in Lightning's clean-up after ldrop named it): the one it was raised while handling, if that names one
            err = next((e for e in exception_chain(err) if isinstance(e, OSError) and e.errno in DISK_ERRNOS and
                        (e.filename or _names_its_folder(e))), err)
        reason = err.strerror if _names_its_folder(err) else disk_error_message(
            err.errno, Path(err.filename).parent if err.filename else None)
        return reason + (f" (writing {err.filename})" if err.filename else "")
    if err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err)


def quiet_kept_disk_errors(original: Any) -> Any:
    """A ``threading.excepthook`` that prints no traceback for a full disk in a thread that keeps its exception
    for the thread it writes for (TensorBoard's event writer: its next write, flush or close raises it, which is
    then reported as one line); anything else goes to ``original``."""
    def hook(args: Any) -> None:
        if getattr(args.thread, "exception", None) is not args.exc_value or disk_errno(args.exc_value) is None:
            original(args)
    return hook


def _names_its_folder(err: OSError) -> bool:
    """Whether ``err`` is one that :func:`~ldrop._io.raise_if_disk_full` made (its message names the folder)."""
    return bool(err.strerror) and err.strerror.startswith(("no space left on ", "file too large for "))


#: The fields of an AudioBatch a task reads: an AttributeError for one of them on another object is a batch of
#: the wrong type.
BATCH_FIELDS = frozenset(f.name for f in dataclasses.fields(AudioBatch))

#: Lightning's ValueError for an int ``val_check_interval`` above an epoch's training batches.
VAL_CHECK_INTERVAL = re.compile(r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the "
                                r"training batches \((\d+)\)")

#: Exceptions ldrop raises for what a user can fix, printed as one line whatever raised them.
USER_ERRORS = (ConfigError, CheckpointError, AudioReadError, IncompleteSweepError, FloatingPointError,
               MisconfigurationException, BatchTypeError, MissingExtraError)


def _raised_in_ldrop(err: BaseException) -> bool:
    """Whether ``err`` was raised by ldrop's own code (a deliberate message), not deep inside a library."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _in_ldrop(tb.tb_frame.f_code.co_filename)


def _in_ldrop(filename: str) -> bool:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ldrop/, not ldrop/cli/
    return os.path.abspath(filename).startswith(package + os.sep)


def _from_worker(err: BaseException) -> str | None:
    """The message of a user error that a DataLoader worker raised (PyTorch re-raises it as a multi-line
    ``Caught X in DataLoader worker process N`` error, often as a ``RuntimeError``)."""
    text = str(err)
    match = re.match(r"Caught (\w+) in DataLoader worker process", text)
    names = {cls.__name__ for cls in (*USER_ERRORS, FileNotFoundError, DatasetLayoutError)}
    raised_at = re.findall(r'^  File "([^"]+)"', text, flags=re.MULTILINE)[-1:]  # as _raised_in_ldrop reads it
    own = match and match.group(1) in ("ValueError", "RuntimeError") and raised_at and _in_ldrop(raised_at[0])
    if not match or match.group(1) not in names | {"AudioFileNotFoundError"} and not own:
        return None
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def user_error_line(err: BaseException) -> str | None:
    """The one line that reports ``err`` if a user can fix it (an argument, a configuration, a file, the
    data, a full disk), classified by type; ``None`` for anything else (a bug: the full traceback)."""
    if (worker := _from_worker(err)) is not None:
        return worker
    if isinstance(err, ConfigError) and (linked := linked_cause(err)) is not None:
        # the datamodule's own error while a link read it (instantiation_error_line made the message): its
        # line, or the full traceback for a bug
        return user_error_line(linked[1])
    if isinstance(err, InstantiationError):  # instantiation_error_line made it
        return str(err).strip()
    if isinstance(err, ArgumentError):  # a parser with exit_on_error=False that main did not wrap
        return argument_error_line(str(err))
    if isinstance(err, AttributeError) and err.name in BATCH_FIELDS and _is_a_steps_batch(err):
        # a batch that a DataLoader of the datamodule's own (not its collate, which is checked) made
        return batch_type_problem(err.obj, "the datamodule's DataLoader (its collate_fn) made")
    if isinstance(err, DatasetLayoutError):  # the expected layout follows on the next lines
        return str(err).strip()
    own = isinstance(err, USER_ERRORS) or isinstance(err, FileNotFoundError) and not err.filename
    if isinstance(err, OSError) and not own:
        return os_error_line(err)
    if own or isinstance(err, ValueError | RuntimeError) and _raised_in_ldrop(err):
        return _first_line(err)
    if isinstance(err, RuntimeError) and str(err).startswith("Early stopping conditioned on metric"):
        return _first_line(err)  # a monitor the task does not log; Lightning lists those it does
    if isinstance(err, ValueError) and (interval := VAL_CHECK_INTERVAL.search(str(err))):
        return (f"--trainer.val_check_interval {interval[1]}: more than the {interval[2]} training batches of an "
                f"epoch; give at most {interval[2]}, or --trainer.check_val_every_n_epoch null to count them across "
                "epochs (--trainer.limit_val_batches 0 turns validation off)")
    return None


def _is_a_steps_batch(err: AttributeError) -> bool:
    """Whether ldrop's own code read the missing field on an object that is not ldrop's (the batch a DataLoader
    gave a step or a validation fit), not a user's code on any object that lacks a field of that name."""
    return (not isinstance(err.obj, AudioBatch | None) and not type(err.obj).__module__.startswith("ldrop.")
            and _raised_in_ldrop(err))


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]
