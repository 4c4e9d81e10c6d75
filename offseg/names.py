"""Model, dataset and FreqFusion-form names, the ``--device`` help and defaults, importable without torch
(command-line choices on devices and before argument parsing)."""
MODEL_NAMES = ("offseg-t", "offseg-b", "offseg-l")
DATASET_NAMES = ("ade20k", "cityscapes", "coco-stuff164k", "pascal-context-59", "folder", "synthetic")
DEVICE_HELP = "torch device: auto (the GPU when torch sees one, else the CPU), cpu, cuda or cuda:N (default auto)"
FREQFUSION_FORMS = ("gather", "taps")  # export forms of FreqFusion (offseg.models.freqfusion_gather, freqfusion)
FREQFUSION_CHOICES = ("auto", *FREQFUSION_FORMS)
CARAFE_FORMS = ("taps", "unfold", "fused")  # inference forms of CARAFE (offseg.models.carafe, carafe_fused)
WINDOW_BATCH = 4  # slide windows per forward in offseg-eval: an ADE20K image has 2, a Cityscapes one 3


def freqfusion_form_for(choice: str, target: str) -> str:
    """The FreqFusion form to export: ``choice`` unless ``auto``, which picks per target (``onnx``: the gather form,
    fastest on ONNX Runtime and OpenVINO as measured; ``engine``: the taps form with native GridSample, which
    TensorRT fuses, until GPU measurements say otherwise; also for ``deepstream``, whose nvinfer runs TensorRT)."""
    if choice != "auto":
        return choice
    return "taps" if target in ("engine", "deepstream") else "gather"
