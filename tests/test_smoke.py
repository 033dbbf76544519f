import json


def test_list_models_json_lists_builtin_models(cli):
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    names = {m["name"]: m for m in json.loads(r.out)["models"]}
    assert {"net", "resnet18-finetune", "resnet18-frozen"} <= set(names)
    assert names["net"]["input_size"] == [1, 32, 32]
    assert names["net"]["plugin"] == "net"


def test_fake_dist_plugin_is_listed(cli, fake_dist):
    fake_dist("cvkit-fake", {"cvkit_fake": """
        import cvkit

        @cvkit.hookimpl
        def register_losses(register):
            register("fake-loss", lambda: None, help="a fake")
    """}, {"fake": "cvkit_fake"})
    r = cli("list", "losses", "--json")
    assert r.code == 0, r.err
    rows = {x["name"]: x for x in json.loads(r.out)["losses"]}
    assert rows["fake-loss"]["plugin"] == "fake"
