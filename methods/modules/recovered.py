"""The labels HST and SST recover in an epoch: per training image, the unknown entries that the
intra-image (co-occurrence) transfer and the cross-image transfer turned into pseudo-positives,
and which images were seen since the epoch began. Both methods clear it at every epoch start, log
its counts at the epoch end and hand it to the harness's label-recovery diagnostics."""
from __future__ import annotations

from torch import Tensor, nn

from benchmark.contract.sample_table import SampleTable

RECOVERY_SOURCES = ("union", "intra", "inter")


class RecoveredLabels(nn.Module):
    def __init__(self, num_train: int, num_classes: int):
        super().__init__()
        self.intra = SampleTable(num_train, num_classes)
        self.inter = SampleTable(num_train, num_classes)
        self.seen = SampleTable(num_train)

    def record(self, index: Tensor, intra: Tensor | None = None, inter: Tensor | None = None) -> None:
        """This iteration's pseudo-positives of the rows ``index`` (either source may come alone);
        the rows count as seen."""
        if intra is not None:
            self.intra.write(index, intra)
        if inter is not None:
            self.inter.write(index, inter)
        self.seen.write(index, True)

    def clear(self) -> None:
        for table in (self.intra, self.inter, self.seen):
            table.clear()

    def counts(self) -> dict[str, float]:
        """Pseudo-positives of the epoch so far: intra, inter and their union."""
        seen = self.seen.rows
        intra, inter = self.intra[seen], self.inter[seen]
        return {"pseudo_intra": float(intra.sum()), "pseudo_inter": float(inter.sum()),
                "pseudo_union": float((intra | inter).sum())}

    def labels(self, recovery: str) -> tuple[Tensor, Tensor] | None:
        """(rows seen, their pseudo-positives from ``recovery``: union, intra or inter), or None
        before any row was seen."""
        index = self.seen.rows.nonzero(as_tuple=True)[0]
        if index.numel() == 0:
            return None
        intra, inter = self.intra[index], self.inter[index]
        return index, {"union": intra | inter, "intra": intra, "inter": inter}[recovery]
