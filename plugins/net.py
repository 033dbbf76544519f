"""Built-in plugin: the chapter's ``net`` (LeNet-style, 1x32x32 input)."""

import cvkit
from cvkit.errors import UsageError


def build_net(num_classes: int, weights: str | None = None):
    from cvkit.checkpoint import load_weights_into
    from cvkit_plugins.lenet import Net

    model = Net(num_classes)
    if weights in (None, "", "none"):
        return model
    if weights == "imagenet":
        raise UsageError("--weights imagenet: model 'net' has no pretrained weights; "
                         "use --weights none or --weights PATH")
    load_weights_into(model, weights, head="fc3")
    return model


@cvkit.hookimpl
def register_models(register):
    register("net", build_net, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,),
             default_transforms="plain",
             help="the chapter's LeNet-style Net: conv 1->6->16, fc 576->120->84->classes, 1x32x32 input")
