"""torchvision's resnet18 for cvkit (imports torch: load it from a factory only)."""

from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    """``zero_init_residual``: each residual block's last BatchNorm starts at 0, so every block starts
    as the identity (for training from scratch: the first steps then cannot blow up the activations
    that validation's running statistics lag behind; loaded weights overwrite it)."""

    def __init__(self, zero_init_residual: bool = False):
        super().__init__(BasicBlock, [2, 2, 2, 2], zero_init_residual=zero_init_residual)


class FrozenBackboneResNet18(ResNet18):
    """A resnet18 whose backbone stays in eval mode, so training the head never moves its BatchNorm
    running statistics (``model.train()`` puts only ``fc`` in training mode)."""

    def train(self, mode: bool = True):
        super().train(mode)
        for name, child in self.named_children():
            if name != "fc":
                child.train(False)
        return self
