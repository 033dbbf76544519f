"""torchvision's resnet18 for cvkit (imports torch: load it from a factory only)."""

from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2])


class FrozenBackboneResNet18(ResNet18):
    """A resnet18 whose backbone stays in eval mode, so training the head never moves its BatchNorm
    running statistics (``model.train()`` puts only ``fc`` in training mode)."""

    def train(self, mode: bool = True):
        super().train(mode)
        for name, child in self.named_children():
            if name != "fc":
                child.train(False)
        return self
