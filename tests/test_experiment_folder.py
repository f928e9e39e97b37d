"""One output folder, one experiment: a recipe run refuses a folder that holds a run of other
settings (it would resume that run's checkpoint and report it as its own)."""

import json

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_quads.training.experiment import (
    SETTINGS_FILE,
    ExperimentMismatchError,
    check_same_experiment,
    experiment_settings,
    record_experiment,
)

HPARAMS = """
bits: 4
init: pretrained
seed: 1986
data_folder: /data/slurp
num_workers: 0
output_folder: !ref results/slurp_<bits>bit/<seed>
save_folder: !ref <output_folder>/save
target_widths: [3, 4, 8]
layer_map: [[-1, -1]]
target_mb: null
quant_opt_class: !name:torch.optim.Adam
head: !new:torch.nn.Linear [2, 3]
"""


def _hparams(**overrides) -> dict:
    return load_hyperpyyaml(HPARAMS, overrides)


def test_settings_are_the_plain_values_and_class_names_that_define_the_run():
    settings = experiment_settings(_hparams())
    assert settings == {"bits": 4, "init": "pretrained", "seed": 1986, "target_widths": [3, 4, 8],
                        "layer_map": [[-1, -1]], "target_mb": None,
                        "quant_opt_class": "torch.optim.adam.Adam"}
    assert json.loads(json.dumps(settings)) == settings  # stored as JSON, read back equal
    assert isinstance(_hparams()["head"], torch.nn.Linear)  # objects are not settings


def test_a_folder_of_other_settings_is_refused_with_every_differing_key(tmp_path):
    hparams = _hparams()
    check_same_experiment(hparams, tmp_path)  # a new folder passes
    path = record_experiment(hparams, tmp_path)
    assert path == tmp_path / SETTINGS_FILE and json.loads(path.read_text())["init"] == "pretrained"
    check_same_experiment(hparams, tmp_path)  # the same run resumes
    message = (rf"{SETTINGS_FILE}: this output folder holds a run with other settings "
               r"\(init: 'pretrained' there, 'random' now; seed: 1986 there, 7 now\)")
    with pytest.raises(ExperimentMismatchError, match=message):
        check_same_experiment(_hparams(init="random", seed=7), tmp_path)
    sgd = load_hyperpyyaml(HPARAMS, "quant_opt_class: !name:torch.optim.SGD")
    with pytest.raises(ExperimentMismatchError, match=r"quant_opt_class: 'torch\.optim\.adam"
                                                      r"\.Adam' there, 'torch\.optim\.sgd\.SGD' now"
                                                      r".*\(--output_folder=\.\.\.\)"):
        check_same_experiment(sgd, tmp_path)
    record_experiment(_hparams(init="random"), tmp_path)  # the first run's settings are kept
    assert json.loads(path.read_text())["init"] == "pretrained"


def test_data_location_and_the_folder_itself_may_change_on_resume(tmp_path):
    record_experiment(_hparams(), tmp_path)
    check_same_experiment(_hparams(data_folder="/elsewhere/slurp", num_workers=4,
                                   output_folder="moved/run"), tmp_path)


def test_an_unreadable_settings_file_is_named(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(ExperimentMismatchError, match=rf"{SETTINGS_FILE}: unreadable"):
        check_same_experiment(_hparams(), tmp_path)
