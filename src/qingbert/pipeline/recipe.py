"""A recipe: one YAML file naming the stages of the chain and their options (``qingbert run RECIPE``).

    name: my-model                 # optional (default: the file's name)
    out: runs/my-model             # the run folder (``--out`` overrides); each stage writes the folder of its name
    stages:
      corpus:    {do: prepare, sources: [builtin:peoples-daily, my.txt], max_seq_len: 128}
      teacher:   {do: pretrain, model: minirbt-h256, data: "${corpus}", max_steps: 800}
      sentiment: {do: finetune, model: "${teacher}", task: builtin:reviews-sentiment, epochs: 3}

A stage is ``do: KIND`` (``prepare``, ``vocab``, ``pretrain``, ``distill``, ``finetune``, ``bench``, ``export``,
``index``, ``serve``; ``do`` may be left out when the stage is named after its kind), the kind's inputs (``model``,
``data``, ``task``...) and any option the kind's Python function takes.  ``${stage}`` (anywhere in a value,
``${stage}/tokenizer`` too) is that stage's output folder, and makes this stage depend on it.

Everything is checked before any stage runs -- YAML, keys (with a did-you-mean), kinds, references, cycles, files
that must exist, and each stage's options through the stage's own config class -- and every error names the recipe
file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from qingbert.errors import QingbertError, closest

RECIPES = Path(__file__).parent / "recipes"  # the recipes shipped in the package: builtin:NAME
REF = re.compile(r"\$\{([^}]*)\}")
TOP_KEYS = ("name", "out", "description", "stages")
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _train_keys() -> set[str]:
    from qingbert.training.loop import TrainConfig

    return {f.name for f in fields(TrainConfig)} - {"resume", "overwrite"}  # the runner decides those two


def _masking_keys() -> set[str]:
    from qingbert.pretraining.mlm import MaskingConfig

    return {f.name for f in fields(MaskingConfig)}


def _own_keys(cls, drop=()) -> set[str]:
    return {f.name for f in fields(cls)} - set(drop)


@dataclass
class Kind:
    """What a stage of one kind takes: inputs (``required`` ones, and which may be lists) and option names."""

    inputs: tuple[str, ...]
    required: tuple[str, ...]
    lists: tuple[str, ...] = ()
    options: set[str] = field(default_factory=set)
    trains: bool = False  # runs the training loop (checkpoints, --resume)


def kinds() -> dict[str, Kind]:
    """Every stage kind, its inputs and options (the options of the function each kind calls)."""
    from qingbert.data.prepare import PrepareConfig
    from qingbert.distillation.config import DistillConfig
    from qingbert.pretraining.pretrain import OWN
    from qingbert.tasks.bench import BenchConfig
    from qingbert.tasks.finetune import FinetuneConfig

    train, masking = _train_keys(), _masking_keys()
    finetune = _own_keys(FinetuneConfig, ("train",)) | train | {"train"}
    return {
        "prepare": Kind(("sources",), ("sources",), ("sources",),
                        _own_keys(PrepareConfig, ("sources", "overwrite"))),
        "vocab": Kind(("sources",), ("sources",), ("sources",),
                      {"size", "min_frequency", "heldout", "lowercase", "text_field", "dedup"}),
        "pretrain": Kind(("model", "data"), ("model", "data"), (),
                         train | masking | set(OWN) | {"train", "masking"}, trains=True),
        "distill": Kind(("teacher", "student", "data", "task", "assistant", "data_dir"), ("teacher", "student"),
                        ("teacher",), _own_keys(DistillConfig) | train | masking
                        | (_own_keys(FinetuneConfig, ("train", "overrides"))), trains=True),
        "finetune": Kind(("model", "task", "data_dir"), ("model", "task"), (), finetune, trains=True),
        "bench": Kind(("models", "tasks", "data_dir"), ("models", "tasks"), ("models", "tasks"),
                      _own_keys(BenchConfig, ("models", "tasks", "out", "data_dir"))),
        "export": Kind(("model", "task", "data_dir"), ("model",), (),
                       {"onnx", "int8", "force", "max_dev_examples", "threads", "speed_batch", "speed_seq"}),
        "index": Kind(("model", "corpus"), ("model", "corpus"), (),
                      {"factory", "batch_size", "pooling", "backend", "text_field", "limit"}),
        "serve": Kind(("model", "index"), ("model",), (), {"texts", "query", "requests", "max_batch"}),
    }


@dataclass
class Stage:
    name: str
    kind: str
    inputs: dict  # as written (``${...}`` unresolved)
    options: dict
    depends: list[str] = field(default_factory=list)

    @property
    def general(self) -> bool:
        """A distill stage on a prepared corpus (general stage), not on a task."""
        return self.kind == "distill" and "data" in self.inputs


@dataclass
class Recipe:
    source: str  # the file, or builtin:NAME
    path: Path  # the file read
    name: str
    out: str | None
    stages: dict[str, Stage]  # in the order they run (dependencies first)
    description: str = ""


# ---------------------------------------------------------------------------
# reading


def recipe_path(source: str) -> Path:
    """``builtin:NAME`` -> the recipe shipped in the package; anything else is a file path."""
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        path = RECIPES / f"{name}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in RECIPES.glob("*.yaml"))
            guess = closest(name, shipped)
            raise QingbertError(f"unknown built-in recipe '{source}'",
                                hint=(f"did you mean 'builtin:{guess}'? " if guess else "")
                                + "shipped: " + ", ".join(f"builtin:{n}" for n in shipped))
        return path
    path = Path(source)
    if not path.is_file():
        raise QingbertError(f"{source}: no such recipe file", hint="give a YAML file or builtin:demo")
    return path


def _yaml_with_lines(text: str, where: str) -> tuple[object, dict]:
    """The YAML document and the line of every key path (tuples of keys / list indices)."""
    import yaml

    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        text_line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        hint = "check the indentation and quoting at that line"
        if "${" in text_line:
            hint = 'inside [...] or {...} write a reference in quotes: ["${stage}"]'
        raise QingbertError(f"{where}{line}: not valid YAML ({problem})", hint=hint) from None
    lines: dict = {}

    def walk(n, path):
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen = set()
            for k, v in n.value:
                key = k.value
                if key in seen:
                    raise QingbertError(f"{where}:{k.start_mark.line + 1}: key '{key}' appears twice",
                                        hint="keep one of them")
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


def refs_in(value) -> list[str]:
    """The stage names a value refers to with ``${name}`` (anywhere inside strings, lists and mappings)."""
    if isinstance(value, str):
        return [m.strip().split("/")[0] for m in REF.findall(value)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []


def apply_sets(data: dict, sets: list[str], where: str) -> None:
    """``--set STAGE.KEY=VALUE`` (VALUE read as YAML: numbers, lists, ``true``) over the recipe's stages."""
    import yaml

    for item in sets:
        target, eq, text = item.partition("=")
        stage, dot, key = target.partition(".")
        if not eq or not dot or not stage or not key:
            raise QingbertError(f"--set {item}: expected STAGE.KEY=VALUE", hint="e.g. --set teacher.max_steps=100")
        stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
        if stage not in stages:
            guess = closest(stage, stages)
            raise QingbertError(f"--set {item}: {where} has no stage '{stage}'",
                                hint=(f"did you mean '{guess}'? " if guess else "") + "stages: " + ", ".join(stages))
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if stages[stage] is None:
            stages[stage] = {}
        stages[stage][key] = value


def load_recipe(source: str | Path, sets: list[str] = ()) -> Recipe:
    """Read and check a recipe (a YAML file or ``builtin:NAME``; ``sets``: ``STAGE.KEY=VALUE`` overrides); any
    problem is one error naming file:line."""
    source = str(source)
    path = recipe_path(source)
    where = source
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QingbertError(f"{where}: not UTF-8 text (byte {e.start})") from None
    data, lines = _yaml_with_lines(text, where)
    if not isinstance(data, dict):
        raise QingbertError(f"{where}: a recipe is a YAML mapping with a 'stages:' mapping, got "
                            f"{type(data).__name__ if data is not None else 'an empty file'}",
                            hint="see `qingbert run --help` or the README's recipe example")
    apply_sets(data, list(sets), where)

    def err(path_, message, hint=None):
        line = lines.get(tuple(path_))
        return QingbertError(f"{where}:{line}: {message}" if line else f"{where}: {message}", hint=hint)

    for key in data:
        if key not in TOP_KEYS:
            guess = closest(str(key), TOP_KEYS)
            raise err([key], f"unknown key '{key}'",
                      (f"did you mean '{guess}'? " if guess else "") + "a recipe has: " + ", ".join(TOP_KEYS))
    raw = data.get("stages")
    if not isinstance(raw, dict) or not raw:
        raise err(["stages"] if "stages" in data else [], "the recipe needs a 'stages:' mapping of stage name -> "
                  "options", hint="e.g. stages: {corpus: {do: prepare, sources: [builtin:reviews]}}")
    for k in ("name", "out", "description"):
        if data.get(k) is not None and not isinstance(data[k], str):
            raise err([k], f"'{k}' must be a string, got {data[k]!r}")
    table = kinds()
    stages: dict[str, Stage] = {}
    for name, body in raw.items():
        name = str(name)
        at = ["stages", name]
        if not STAGE_NAME.match(name):
            raise err(at, f"stage name '{name}' is not a plain folder name (letters, digits, '-', '_', '.')")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise err(at, f"stage '{name}': expected a mapping of options, got {type(body).__name__}")
        kind = body.get("do", name if name in table else None)
        if kind is None:
            raise err(at, f"stage '{name}': no 'do:' kind", hint="do: one of " + ", ".join(table))
        if kind not in table:
            guess = closest(str(kind), table)
            raise err(at + ["do"], f"stage '{name}': unknown kind '{kind}'",
                      (f"did you mean '{guess}'? " if guess else "") + "kinds: " + ", ".join(table))
        spec = table[kind]
        inputs, options = {}, {}
        for key, value in body.items():
            if key == "do":
                continue
            if key in spec.inputs:
                inputs[key] = value
            elif key in spec.options:
                options[key] = value
            else:
                guess = closest(str(key), sorted(spec.inputs + tuple(spec.options)))
                raise err(at + [key], f"stage '{name}' ({kind}): unknown key '{key}'",
                          f"did you mean '{guess}'?" if guess else
                          f"{kind} takes: " + ", ".join(sorted(spec.inputs + tuple(spec.options))))
        for key in spec.required:
            if inputs.get(key) in (None, "", []):
                raise err(at, f"stage '{name}' ({kind}): missing '{key}'")
        stages[name] = Stage(name, kind, inputs, options)
    recipe = Recipe(source, path, data.get("name") or (path.stem if not source.startswith("builtin:") else
                                                        source.split(":", 1)[1]),
                    data.get("out"), {}, data.get("description") or "")
    for st in stages.values():
        for key, value in {**st.inputs, **st.options}.items():
            for ref in refs_in(value):
                if ref not in stages:
                    guess = closest(ref, stages)
                    raise err(["stages", st.name, key], f"stage '{st.name}': '{key}' refers to '${{{ref}}}', which "
                              "is not a stage of this recipe",
                              (f"did you mean '${{{guess}}}'? " if guess else "") + "stages: " + ", ".join(stages))
                if ref == st.name:
                    raise err(["stages", st.name, key], f"stage '{st.name}' refers to itself")
                if ref not in st.depends:
                    st.depends.append(ref)
    recipe.stages = _in_order(stages, err)
    for st in recipe.stages.values():
        check_stage(st, table[st.kind], recipe,
                    lambda k, m, hint=None, s=st: err(["stages", s.name, k], m, hint))
    return recipe


def _in_order(stages: dict[str, Stage], err) -> dict[str, Stage]:
    """Dependencies first, otherwise in the recipe's order; a cycle is an error naming it."""
    order: dict[str, Stage] = {}
    state: dict[str, int] = {}

    def visit(name, path):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise err(["stages", name], "the stages refer to each other in a cycle: " + " -> ".join(cycle),
                      hint="a stage can only use the output of stages that do not need it")
        state[name] = 1
        for dep in stages[name].depends:
            visit(dep, path + [name])
        state[name] = 2
        order[name] = stages[name]

    for name in stages:
        visit(name, [])
    return order


# ---------------------------------------------------------------------------
# checking one stage before anything runs


LOCAL = re.compile(r"^(/|\./|\.\./|~)")


def _is_zoo(name: str) -> bool:
    from qingbert.models import zoo

    return zoo.lookup(name) is not None


def check_stage(st: Stage, spec: Kind, recipe: Recipe, err) -> None:
    """Inputs that must exist do; names are known; the options build the stage's config without error."""
    from qingbert.tasks.readers import ALIASES, TASKS

    base = recipe.path.parent if not recipe.source.startswith("builtin:") else Path.cwd()
    for key in spec.inputs:
        value = st.inputs.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and key not in spec.lists:
            raise err(key, f"stage '{st.name}': '{key}' takes one value, not a list")
        for v in values:
            if not isinstance(v, str) or not v.strip():
                raise err(key, f"stage '{st.name}': '{key}' must be a string, got {v!r}")
            if REF.search(v):
                continue
            if key in ("task", "tasks"):
                if v.lower() not in TASKS and v.lower() not in ALIASES and v not in ("classification", "pair"):
                    guess = closest(v, list(TASKS))
                    raise err(key, f"stage '{st.name}': unknown task '{v}'",
                              (f"did you mean '{guess}'? " if guess else "") + "tasks: " + ", ".join(TASKS))
                continue
            if v.startswith("builtin:") or v.startswith("random:"):
                continue
            p = Path(v).expanduser()
            p = p if p.is_absolute() else base / p
            must_exist = key in ("sources", "data", "data_dir", "corpus", "index") or LOCAL.match(v)
            if key in ("model", "teacher", "student", "assistant", "models") and (_is_zoo(v) or not must_exist):
                continue  # a zoo name or a hub id
            if must_exist and not p.exists():
                raise err(key, f"stage '{st.name}': {key} '{v}' does not exist ({p})",
                          hint="fix the path (relative paths are relative to the recipe file)")
    if st.kind == "distill":
        if ("data" in st.inputs) == ("task" in st.inputs):
            raise err("do", f"stage '{st.name}': a distill stage takes either 'data' (general stage, a prepared "
                      "corpus) or 'task' (task stage, fine-tuned teachers)")
        if "assistant" in st.inputs and "task" in st.inputs:
            raise err("assistant", f"stage '{st.name}': 'assistant' belongs to the general stage (with 'data')")
    try:
        build_configs(st)
    except QingbertError as e:
        key = next((k for k in st.options if f"'{k}'" in str(e) or f" {k} " in str(e)), "do")
        raise err(key, f"stage '{st.name}' ({st.kind}): {e}", e.hint) from None


def build_configs(st: Stage, options: dict | None = None) -> dict:
    """The stage's options as its function's config objects (checked); ``{"config": ..., ...}``."""
    from qingbert.distillation.config import DistillConfig
    from qingbert.pretraining.pretrain import PretrainConfig
    from qingbert.tasks.bench import BenchConfig
    from qingbert.tasks.finetune import FinetuneConfig

    opts = dict(st.options if options is None else options)
    if st.kind == "pretrain":
        cfg = PretrainConfig.from_dict(opts)
        cfg.train.check()
        return {"config": cfg}
    if st.kind == "finetune":
        cfg = FinetuneConfig.from_dict(opts)
        cfg.train.check()
        return {"config": cfg}
    if st.kind == "distill":
        ft_keys = _own_keys(FinetuneConfig, ("train", "overrides"))
        ft = {k: opts.pop(k) for k in list(opts) if k in ft_keys}
        if ft and st.general:
            raise QingbertError(f"'{next(iter(ft))}' is a task-stage option (the stage has 'data', not 'task')")
        cfg = DistillConfig.from_dict(opts)
        cfg.train.check()
        return {"config": cfg, "finetune_config": ft}
    if st.kind == "bench":
        cfg = BenchConfig.from_dict({**opts, "models": ["m"], "tasks": ["t"], "out": "."})
        cfg.validate()
        return {"config": opts}
    return {"config": opts}
