"""Datasets whose labels are mapped to another class list (imports torch: load it lazily)."""

from torch.utils.data import Dataset, IterableDataset


class RelabelledDataset(Dataset):
    """``dataset`` with label ``y`` given as ``mapping[y]`` and ``classes`` as its class list."""

    def __init__(self, dataset, mapping, classes):
        self.dataset, self.mapping, self.classes = dataset, list(mapping), list(classes)
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            self.targets = [self.mapping[int(t)] for t in targets]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, self.mapping[int(y)]


class RelabelledStream(IterableDataset):
    """The same for a stream (an ``IterableDataset``: sharded data)."""

    def __init__(self, dataset, mapping, classes):
        self.dataset, self.mapping, self.classes = dataset, list(mapping), list(classes)

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        return ((x, self.mapping[int(y)]) for x, y in self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def relabelled(dataset, mapping, classes):
    kind = RelabelledStream if isinstance(dataset, IterableDataset) else RelabelledDataset
    return kind(dataset, mapping, classes)
