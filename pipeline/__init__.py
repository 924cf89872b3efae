"""ssimcache pipeline: one subpackage per stage or role, so the folder tree is the architecture.

    images/    reading inputs: path expansion, bounded reads, the one image decoder
    extract/   stage one: weights, backbone, feature spec + fingerprint, runner, cluster
    labels/    the label (SSIM after vectorization, SVG bytes) and its CSV writer
    head/      the MLP head: config, torch module, numpy copy, checkpoint
    export/    backbone + head in one module, and its ONNX / TorchScript files
    train/     stage two: labels CSV, feature gathering, fitting, metrics, evaluation reports
    score.py   scoring cached images with the numpy head (no torch)
    validate/  the architecture validation suite
    bench/     benchmarks, each against a baseline in the same run
    cli/       the `ssimcache` command: the only place that imports click or exits
    config.py, errors.py, atomic.py, measure.py: helpers every stage may use

Imports go one way: cli -> runners (extract.runner, train, score, validate, bench) ->
components -> store. tests/test_layering.py checks the rules.
"""

__version__ = "0.1.0"
