"""Fine-tuning and training from folders of images: ``mobilevitv2 train`` and its Python API.

    from mobilevitv2.training import TrainingArguments, train
    records = train(TrainingArguments(data="flowers", out="runs/flowers", model="mobilevitv2-1.0-imagenet"))

Needs the ``train`` extra (torchvision for the augmentation, tqdm, matplotlib).
"""

from mobilevitv2.training.arguments import TrainingArguments
from mobilevitv2.training.loop import train

__all__ = ["TrainingArguments", "train"]
