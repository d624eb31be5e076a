"""Every user error of the command line is a message, exit code 2, and nothing half-written.

One test per case a new user hit (issue 11): each runs the CLI in-process through
``cli.main`` (one in a real subprocess) and checks the exit code, the message and the files.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nfncompile import cli

from .test_cli import MLP_ARGS, assert_user_error, run


def no_trace_allowed(monkeypatch) -> None:
    """Make tracing fail loudly: a case that must be rejected before any work."""
    import nfncompile.frontend.tracing as tracing

    def boom(*args, **kwargs):
        raise AssertionError("the model was traced although the arguments are invalid")

    monkeypatch.setattr(tracing, "trace_with_report", boom)


# --------------------------------------------------------------------------------------------
# output paths
# --------------------------------------------------------------------------------------------


def test_missing_output_folders_are_created(capsys, tmp_path):
    path = tmp_path / "nodir" / "sub" / "spec.yaml"
    code, out, _ = run(capsys, "trace", *MLP_ARGS, "-o", str(path))
    assert code == 0 and f"wrote {path}" in out
    assert path.read_text().startswith("spaces:")


def test_output_that_is_a_folder(capsys, tmp_path, monkeypatch):
    no_trace_allowed(monkeypatch)
    code, _, err = run(capsys, "trace", *MLP_ARGS, "-o", str(tmp_path))
    assert_user_error(code, err, f"-o {tmp_path}: is a folder", "spec.yaml")


def test_output_below_a_file(capsys, tmp_path, monkeypatch):
    no_trace_allowed(monkeypatch)
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "trace", *MLP_ARGS, "-o", str(tmp_path / "afile" / "s.yaml"))
    assert_user_error(code, err, f"{tmp_path / 'afile'} is a file, not a folder")


def test_output_that_cannot_be_written(capsys, tmp_path, monkeypatch):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.arguments, "atomic_write", refuse)
    code, _, err = run(capsys, "trace", *MLP_ARGS, "-o", str(tmp_path / "s.yaml"))
    assert_user_error(code, err, f"cannot write {tmp_path / 's.yaml'}: Permission denied")


# --------------------------------------------------------------------------------------------
# --draw
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"), [("g.txt", "format 'txt'"), ("graph", "no file extension")]
)
def test_draw_format_is_checked_before_any_work(capsys, tmp_path, monkeypatch, name, message):
    pytest.importorskip("matplotlib")
    no_trace_allowed(monkeypatch)
    spec = tmp_path / "s.yaml"
    code, _, err = run(capsys, "trace", *MLP_ARGS, "-o", str(spec), "--draw", str(tmp_path / name))
    assert_user_error(code, err, message, "png", "svg", "pdf")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_draw_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backend_bases", None)  # import fails
    no_trace_allowed(monkeypatch)
    code, _, err = run(capsys, "trace", *MLP_ARGS, "--draw", str(tmp_path / "g.png"))
    assert_user_error(code, err, "--draw needs matplotlib", "nfncompile[draw]")


def test_spec_is_written_before_drawing(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import nfncompile.frontend.drawing as drawing

    def fail(report, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(drawing, "draw_symmetry_graph", fail)
    spec = tmp_path / "s.yaml"
    code, out, err = run(capsys, "trace", *MLP_ARGS, "-o", str(spec), "--draw", str(tmp_path / "g.png"))  # fmt: skip
    assert_user_error(code, err, f"cannot write {tmp_path / 'g.png'}: No space left on device")
    assert f"wrote {spec}" in out and spec.read_text().startswith("spaces:")


def test_draw_into_a_missing_folder(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "pics" / "g.png"
    code, out, _ = run(capsys, "trace", *MLP_ARGS, "-o", str(tmp_path / "s.yaml"), "--draw", str(png))  # fmt: skip
    assert code == 0 and f"wrote {png}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# errors in the user's own code: shown with the user's frame, not ours
# --------------------------------------------------------------------------------------------

USER_MODULE = textwrap.dedent(
    """\
    import torch

    def check(width):
        raise ValueError(f"width {width} is too small")

    def make(width=3):
        return check(width)

    def bad_layer():
        return torch.nn.Linear(2, "two")

    class Reshapes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x).view(3, 7)

    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x):
            if self.fc(x).sum() > 0:
                return x
            return -x

    def reshapes():
        return Reshapes()

    def branches():
        return Branches()
    """
)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "mymodels.py"
    path.write_text(USER_MODULE)
    return path


def assert_user_frame(err: str, path: Path, line: int, source: str) -> None:
    assert f'File "{path}", line {line}' in err, err
    assert source in err, err
    assert "nfncompile/" not in err.replace(str(path), ""), err  # none of our frames


def test_exception_in_the_factory(capsys, user_module):
    code, _, err = run(capsys, "trace", f"{user_module}:make", "--input-shape", "1,2")
    assert_user_error(code, err, f"{user_module}:make() raised ValueError: width 3 is too small")
    assert_user_frame(err, user_module, 4, 'raise ValueError(f"width {width} is too small")')


def test_type_error_inside_the_factory_is_not_blamed_on_the_kwargs(capsys, user_module):
    code, _, err = run(capsys, "trace", f"{user_module}:bad_layer", "--input-shape", "1,2")
    assert_user_error(code, err, "bad_layer() raised TypeError")
    assert "rejected keyword arguments" not in err
    assert_user_frame(err, user_module, 10, 'return torch.nn.Linear(2, "two")')


def test_keyword_arguments_the_factory_does_not_take(capsys, user_module):
    code, _, err = run(capsys, "trace", f"{user_module}:make", "--kwarg", "depth=2",
                       "--input-shape", "1,2")  # fmt: skip
    assert_user_error(code, err, "rejected keyword arguments {'depth': 2}", "'depth'")


def test_syntax_error_in_the_module(capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\ndef make(:\n    pass\n")
    code, _, err = run(capsys, "trace", f"{path}:make", "--input-shape", "1,2")
    assert_user_error(code, err, f"cannot import {str(path)!r}: SyntaxError")
    assert_user_frame(err, path, 3, "def make(:")
    assert "^" in err  # the caret under the error


def test_exception_at_import(capsys, tmp_path, monkeypatch):
    (tmp_path / "needs_pkg.py").write_text("import torch\nimport no_such_package_zz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "needs_pkg", raising=False)
    code, _, err = run(capsys, "trace", "needs_pkg:make", "--input-shape", "1,2")
    assert_user_error(code, err, "cannot import module 'needs_pkg'", "no_such_package_zz")
    assert_user_frame(err, tmp_path / "needs_pkg.py", 2, "import no_such_package_zz")


def test_exception_in_forward(capsys, user_module):
    code, _, err = run(capsys, "trace", f"{user_module}:reshapes", "--input-shape", "1,2")
    assert_user_error(code, err, "fails on an input of shape [1, 2]", "RuntimeError")
    assert_user_frame(err, user_module, 18, "return self.fc(x).view(3, 7)")


def test_untraceable_forward_points_at_the_line(capsys, user_module):
    code, _, err = run(capsys, "trace", f"{user_module}:branches", "--input-shape", "1,2")
    assert_user_error(code, err, "torch.fx could not trace Branches", "specs/weight_spaces/")
    assert f"{user_module}:26 in forward: if self.fc(x).sum() > 0:" in err, err


def test_verify_shows_the_user_frame_too(capsys, user_module, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("spaces: {}\nparams: {}\n")
    code, _, err = run(capsys, "verify", f"{user_module}:make", "--spec", str(spec),
                       "--input-shape", "1,2")  # fmt: skip
    assert_user_error(code, err, "width 3 is too small")
    assert_user_frame(err, user_module, 4, "raise ValueError")


def test_a_real_process_prints_no_traceback(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def make(:\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nfncompile.cli", "trace", f"{path}:make", "--input-shape", "1,2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("nfncompile: error: cannot import"), proc.stderr
    assert "Traceback" not in proc.stderr and f'File "{path}", line 1' in proc.stderr


def test_spec_that_is_a_folder(capsys, tmp_path):
    code, _, err = run(capsys, "layer", str(tmp_path))
    assert_user_error(code, err, f"{tmp_path}: is a folder, not a spec file")


# --------------------------------------------------------------------------------------------
# a failed verify explains itself
# --------------------------------------------------------------------------------------------


def test_failed_verify_names_the_parameters_and_the_diverging_node(capsys, tmp_path):
    from .test_cli import BROKEN_MLP_SPEC

    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_MLP_SPEC)  # claims fc2 does not read h1
    code, out, _ = run(capsys, "verify", *MLP_ARGS, "--spec", str(bad), "--trials", "2")
    assert code == 1
    h1 = out[out.index("FAIL h1") :]
    assert "moves: fc1.weight, fc1.bias" in h1
    assert "first diverging node: fc2 = call_module fc2 (Linear) on relu" in h1


def test_failed_verify_points_at_the_users_line(capsys, tmp_path):
    root = Path(__file__).resolve().parent.parent
    models = root / "examples" / "my_models.py"
    claim = (root / "specs" / "weight_spaces" / "concat_mlp.yaml").read_text()
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(claim.replace("[h2, [h1, in]]", "[h2, [in, h1]]"))  # pieces swapped
    code, out, _ = run(capsys, "verify", f"{models}:concat_mlp", "--spec", str(wrong),
                       "--input-shape", "4,4")  # fmt: skip
    assert code == 1
    source = models.read_text().splitlines()
    line = next(i for i, t in enumerate(source, 1) if "self.fc2(torch.cat" in t)
    assert "first diverging node: fc2" in out
    assert f"at {models}:{line}: h2 = torch.relu(self.fc2(torch.cat([h1, x], dim=1)))" in out


# --------------------------------------------------------------------------------------------
# specs and interrupts
# --------------------------------------------------------------------------------------------


def test_duplicate_key_in_a_spec(capsys, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "spaces:\n  in: {size: 2, role: input}\n  in: {size: 3, role: input}\nparams: {}\n"
    )
    code, _, err = run(capsys, "layer", str(path))
    assert_user_error(code, err, "dup.yaml", "duplicate key 'in'")


def test_ctrl_c_is_one_line(capsys, monkeypatch):
    import nfncompile.frontend.tracing as tracing

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracing, "trace_with_report", interrupted)
    code, out, err = run(capsys, "trace", *MLP_ARGS)
    assert code == 130 and err == "nfncompile: interrupted\n" and out == ""
