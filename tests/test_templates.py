"""Prompt templates of well-known datasets, found by task name."""

from core.templates import GENERIC_TEMPLATES, known_templates, templates_for


def test_templates_are_found_by_dataset_name():
    assert known_templates("MNISTVal") == ['a photo of the number: "{c}".']
    assert known_templates("stanford_cars")[3] == "i love my {c}!"
    assert len(known_templates("RESISC45")) == 18 and "aerial view of the {c}." in known_templates("resisc45")
    assert len(known_templates("ImageNet")) == 80 and all("{c}" in t for t in known_templates("imagenet"))
    assert known_templates("my_data") is None and templates_for("my_data") == GENERIC_TEMPLATES
