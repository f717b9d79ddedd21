import pytest

from prompt_ft_assets.templates import (
    PromptTemplate,
    TemplateError,
    check_answer_choices,
    load_promptsource_templates,
    render,
    select_templates,
    slugify,
)

COLA_TEMPLATE_NAMES = {
    "Make sense yes no",
    "is_this_correct",
    "editing",
    "Following sentence acceptable",
    "Previous sentence acceptable",
}


@pytest.fixture(scope="module")
def cola_templates():
    return load_promptsource_templates("glue", "cola")


def test_all_five_cola_templates_load(cola_templates):
    assert {template.name for template in cola_templates} == COLA_TEMPLATE_NAMES


@pytest.mark.parametrize("name", sorted(COLA_TEMPLATE_NAMES))
def test_cola_template_renders(cola_templates, name):
    template = select_templates(cola_templates, [name])[0]
    sentence = "The sailors rode the breeze clear of the rocks."
    rendered = render(template, {"sentence": sentence, "label": 1})
    assert sentence in rendered.prompt
    assert "|||" not in rendered.prompt
    assert len(rendered.answer_choices) == 2
    assert rendered.target == rendered.answer_choices[1]


def test_make_sense_template_text(cola_templates):
    template = select_templates(cola_templates, ["Make sense yes no"])[0]
    rendered = render(template, {"sentence": "Bill left.", "label": 0})
    assert rendered.prompt == (
        "Does the following sentence make sense and use correct English? Please answer yes or no.\nBill left."
    )
    assert rendered.answer_choices == ["no", "yes"]
    assert rendered.target == "no"


def test_select_by_slug(cola_templates):
    assert select_templates(cola_templates, ["make_sense_yes_no"])[0].name == "Make sense yes no"


def test_unknown_template_name_rejected(cola_templates):
    with pytest.raises(TemplateError, match="'no such template' not found"):
        select_templates(cola_templates, ["no such template"])


def test_unknown_dataset_rejected():
    with pytest.raises(TemplateError, match="no templates for dataset"):
        load_promptsource_templates("glue", "not_a_subset")


def _template(jinja, choices="no ||| yes"):
    return PromptTemplate("t1", "evil", jinja, choices, "glue", "cola")


@pytest.mark.parametrize(
    "jinja",
    [
        "{{ sentence.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ sentence.format.__globals__ }}",
    ],
)
def test_sandbox_blocks_python_internals(jinja):
    with pytest.raises(TemplateError, match="'evil'"):
        render(_template(jinja), {"sentence": "x", "label": 0})


def test_undefined_field_names_template():
    with pytest.raises(TemplateError, match="'evil'.*premise"):
        render(_template("{{ premise }}"), {"sentence": "x", "label": 0})


def test_answer_choices_must_cover_labels():
    with pytest.raises(TemplateError, match="no answer choice covers \\['c'\\]"):
        check_answer_choices(_template("{{sentence}}", "a ||| b"), ["a", "b", "c"])


def test_slugify():
    assert slugify("Make sense yes no") == "make_sense_yes_no"
    assert slugify("is_this_correct") == "is_this_correct"
    assert slugify("GPT-3 style (2)") == "gpt_3_style_2"
