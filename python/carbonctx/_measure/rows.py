"""A resolved row as a :class:`~carbonctx.Measurement`: built only when someone reads it or it
is written, from the batch's columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carbonctx._measure.batch import Batch
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.sources import SourceColumns

if TYPE_CHECKING:
    from carbonctx._results.measurement import Measurement

__all__ = ["MeasurementBuilder"]

_RANK_FIELDS = ("rank", "local_rank", "node", "job")


class MeasurementBuilder:
    """Builds Measurements of one runtime's rows (its sources, names, pid and clock offset)."""

    __slots__ = ("_carbon", "_columns", "_names", "_offset", "_pid", "_rank")

    def __init__(
        self,
        columns: SourceColumns,
        names: list[str],
        *,
        pid: int,
        offset: float,
        carbon: RegionCarbon,
        rank: dict[str, Any] | None = None,
    ) -> None:
        self._rank = {k: v for k, v in (rank or {}).items() if k in _RANK_FIELDS}
        self._columns = columns
        self._names = names
        self._pid = pid
        self._offset = offset
        self._carbon = carbon

    def build(self, batch: Batch, k: int) -> Measurement:
        """Row ``k`` of ``batch``."""
        from carbonctx._results.measurement import Measurement  # loaded with the first batch

        info = batch.infos[k]
        if info is None:
            name, thread, parent, tags = self._names[int(batch.tags[k])], 0, None, None
        else:
            name, thread, parent, tags = info
        t0 = int(batch.t0[k])
        t1 = int(batch.t1[k])
        cpu = float(batch.cpu[k])
        dram = float(batch.dram[k])
        gpu = float(batch.gpu[k])
        columns = batch.columns if batch.columns is not None else self._columns
        by_source, uncertainty = columns.per_source(batch.joules[k].tolist(), batch.unc[k].tolist())
        start = t0 * 1e-9 + self._offset
        end = t1 * 1e-9 + self._offset
        energy = cpu + dram + gpu
        co2_g, intensity, zone, carbon = self._carbon.for_region(energy, start, end)
        return Measurement(
            name=name,
            id=int(batch.ids[k]),
            pid=self._pid,
            thread=thread,
            parent=parent,
            start=start,
            end=end,
            duration_s=(t1 - t0) * 1e-9,
            energy_j=energy,
            cpu_j=cpu,
            dram_j=dram,
            gpu_j=gpu,
            uncertainty_j=uncertainty,
            by_source=by_source,
            co2_g=co2_g,
            intensity=intensity,
            zone=zone,
            carbon=carbon,
            missing=tuple(columns.missing(batch.nan[k])),
            estimated=batch.estimated,
            tags=dict(tags) if tags else {},
            recorded=batch.recorded,
            **self._rank,
        )
