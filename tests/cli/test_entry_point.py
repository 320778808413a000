"""The `wquant` entry point keeps other libraries' notices off the user's terminal; wquant's own still show.
(`--version` is checked in tests/hostile/test_misc_hostile.py.)"""

from __future__ import annotations

import logging
import warnings

from typer.testing import CliRunner

from wquant.cli.main import app


def test_third_party_notices_are_silenced_but_wquant_warnings_are_not(caplog) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        assert CliRunner().invoke(app, ["sweep", "--help"]).exit_code == 0
        # what importing torchao (through transformers' quantizers) logs and warns, as it would
        with caplog.at_level(logging.WARNING):
            logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
            logging.getLogger("torch.utils._pytree").warning("<enum 'KernelPreference'> ... is deprecated")
            logging.getLogger("wquant.algorithms").warning("wquant's own log line")
        warnings.warn_explicit("old API", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("old API", DeprecationWarning, "_pytree.py", 1, module="torch.utils._pytree")
        warnings.warn_explicit("damping raised", UserWarning, "gptq.py", 1, module="wquant.algorithms.gptq")
        warnings.warn_explicit("renamed", FutureWarning, "spec.py", 1, module="wquant.formats.spec")
    assert [r.getMessage() for r in caplog.records] == ["wquant's own log line"]
    assert sorted(str(w.message) for w in seen) == ["damping raised", "renamed"]


def test_flags_show_no_value_type_in_help() -> None:
    from typer.testing import CliRunner

    from wquant.cli.main import app

    for argv in (["--help"], ["quantize", "--help"], ["study", "--help"]):
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "160"})
        assert result.exit_code == 0 and "--help" in result.stdout and "<bool>" not in result.stdout, argv
