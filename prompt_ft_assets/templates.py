"""promptsource templates: read from the installed package's YAML and rendered in a Jinja sandbox.

promptsource 0.2.3 cannot be imported on current Python (it needs pkg_resources), so this module
locates the package with importlib and parses its templates.yaml files itself.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from jinja2 import TemplateError as JinjaTemplateError
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

PROMPT_TARGET_SEPARATOR = "|||"


class TemplateError(ValueError):
    """A template that cannot be loaded or rendered, named by dataset and template name."""


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    name: str
    jinja: str
    answer_choices: str | None
    dataset: str
    subset: str | None

    @property
    def slug(self) -> str:
        return slugify(self.name)


def slugify(name: str) -> str:
    """Turn a template name such as "Make sense yes no" into a partition-key part: make_sense_yes_no."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return re.sub(r"_+", "_", slug)


class _TemplateLoader(yaml.SafeLoader):
    """A YAML loader that reads promptsource's `!Template` and `!TemplateMetadata` tags as mappings."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


_TemplateLoader.add_constructor("!Template", _construct_mapping)
_TemplateLoader.add_constructor("!TemplateMetadata", _construct_mapping)


def promptsource_templates_dir() -> Path:
    spec = importlib.util.find_spec("promptsource")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateError(
            "promptsource is not installed; run scripts/setup.sh, which installs promptsource==0.2.3 "
            "with --no-deps --ignore-requires-python"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "templates"


def load_promptsource_templates(dataset: str, subset: str | None = None) -> list[PromptTemplate]:
    """Read all templates of a promptsource dataset, sorted by name."""
    folder = promptsource_templates_dir() / dataset
    if subset:
        folder = folder / subset
    path = folder / "templates.yaml"
    if not path.is_file():
        raise TemplateError(f"promptsource has no templates for dataset {dataset!r} subset {subset!r} ({path})")
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)
    templates = [
        PromptTemplate(
            id=str(entry["id"]),
            name=str(entry["name"]),
            jinja=str(entry["jinja"]),
            answer_choices=entry.get("answer_choices"),
            dataset=dataset,
            subset=subset,
        )
        for entry in raw.get("templates", {}).values()
    ]
    return sorted(templates, key=lambda template: template.name)


def select_templates(templates: list[PromptTemplate], names: list[str] | None) -> list[PromptTemplate]:
    """Keep the named templates, in the order given; all of them when names is None."""
    if names is None:
        return templates
    by_name = {template.name: template for template in templates}
    by_slug = {template.slug: template for template in templates}
    selected = []
    for name in names:
        template = by_name.get(name) or by_slug.get(name)
        if template is None:
            known = ", ".join(repr(t.name) for t in templates)
            raise TemplateError(f"template {name!r} not found; the dataset's templates are {known}")
        selected.append(template)
    return selected


def _most_frequent(items: list[Any]) -> Any:
    return Counter(items).most_common(1)[0][0]


def _make_environment(seed: int) -> ImmutableSandboxedEnvironment:
    # The filters promptsource templates use; `choice` is seeded so a rendering is reproducible.
    rng = random.Random(seed)
    environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    environment.filters["choice"] = lambda items: rng.choice(list(items))
    environment.filters["most_frequent"] = _most_frequent
    environment.filters["highlight"] = lambda text: text
    environment.globals["zip"] = zip
    return environment


@dataclass(frozen=True)
class RenderedPrompt:
    prompt: str
    target: str | None
    answer_choices: list[str]


def render(template: PromptTemplate, example: Mapping[str, Any], seed: int = 0) -> RenderedPrompt:
    """Render a template on one example: the prompt, the target and the answer choices.

    The example maps field names to values, with the label as an integer index into the
    answer choices. A template that uses an undefined field or reaches for Python internals
    raises TemplateError with the template's name.
    """
    environment = _make_environment(seed)
    try:
        rendered = environment.from_string(template.jinja).render(
            **example, answer_choices=_render_answer_choices(template, example, environment)
        )
    except (JinjaTemplateError, TypeError, IndexError, KeyError) as error:
        raise TemplateError(
            f"template {template.name!r} ({template.dataset}/{template.subset}) failed to render: "
            f"{type(error).__name__}: {error}"
        ) from error
    parts = rendered.split(PROMPT_TARGET_SEPARATOR)
    prompt = parts[0].strip()
    target = parts[1].strip() if len(parts) > 1 else None
    return RenderedPrompt(prompt, target, _render_answer_choices(template, example, environment))


def _render_answer_choices(
    template: PromptTemplate, example: Mapping[str, Any], environment: ImmutableSandboxedEnvironment
) -> list[str]:
    if not template.answer_choices:
        return []
    try:
        text = environment.from_string(template.answer_choices).render(**example)
    except JinjaTemplateError as error:
        raise TemplateError(f"answer choices of template {template.name!r} failed to render: {error}") from error
    return [choice.strip() for choice in text.split(PROMPT_TARGET_SEPARATOR)]


def check_answer_choices(template: PromptTemplate, label_names: list[str]) -> None:
    """Reject a template whose answer choices do not give one choice per label."""
    choices = [c.strip() for c in (template.answer_choices or "").split(PROMPT_TARGET_SEPARATOR) if c.strip()]
    if len(choices) < len(label_names):
        missing = label_names[len(choices):]
        raise TemplateError(
            f"template {template.name!r} has answer choices {choices} but the dataset has labels {label_names}; "
            f"no answer choice covers {missing}. Drop the template from the spec's templates list."
        )
