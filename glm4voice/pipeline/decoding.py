"""Speech decoding shared by every session: one streaming-decoder driver per mode, and blocks of different
sessions that become ready at the same time decoded as one batch (``StreamingDecoder.step_many``).

Sessions whose LM steps run together (``LocalLM`` batches them) receive their speech codes together, so their
decoder blocks fall due together. A session that posts codes completing a block waits a few milliseconds for the
others' codes before the flow runs; steps that complete no block cost nothing and run at once. Results equal
separate decoding up to float rounding (each row keeps its own noise).
"""

from __future__ import annotations

import threading

GATHER_SECONDS = 0.005  # how long a ready block waits for other sessions' blocks (a block costs 10-1000x more)


class DecoderPool:
    def __init__(self, decoder):
        self.decoder = decoder
        self._drivers: dict[str, object] = {}
        self._turn = threading.Condition()
        self._busy = False
        self._posted: dict[int, tuple[str, list[int], object]] = {}
        self._results: dict[int, object] = {}
        self.steps = 0  # batched steps that decoded at least one block
        self.blocks = 0  # blocks decoded in those steps (blocks / steps = mean batch)

    def driver(self, mode: str):
        if mode not in self._drivers:
            from glm4voice.decoder.stream import StreamingDecoder

            self._drivers[mode] = StreamingDecoder(self.decoder, mode=mode)
        return self._drivers[mode]

    def init_state(self, mode: str):
        return self.driver(mode).init_state()

    @staticmethod
    def owes_audio(state) -> bool:
        from glm4voice.decoder.stream import StreamingDecoder

        return StreamingDecoder.owes_audio(state)

    def _completes_block(self, mode: str, codes: list[int], state) -> bool:
        drv = self.driver(mode)
        blocks = drv.blocks if mode == "official" else drv.schedule.blocks
        return len(state.pending) + len(codes) >= blocks[min(state.block_index, len(blocks) - 1)]

    def step(self, mode: str, codes: list[int], state):
        """``StreamingDecoder.step`` for one session, batched with the blocks other sessions post meanwhile."""
        key = id(state)
        with self._turn:
            self._posted[key] = (mode, codes, state)
            while key not in self._results:
                if not self._busy:
                    self._busy = True
                    if any(self._completes_block(*item) for item in self._posted.values()):
                        self._turn.wait(GATHER_SECONDS)  # let the other sessions' codes of this LM step arrive
                    batch, self._posted = self._posted, {}
                    break
                self._turn.wait()
            else:
                return _unwrap(self._results.pop(key))
        out: dict[int, object] = {}
        blocks = 0
        try:
            for mode_ in {m for m, _, _ in batch.values()}:
                keys = [k for k, (m, _, _) in batch.items() if m == mode_]
                blocks += sum(self._completes_block(*batch[k]) for k in keys)
                results = self.driver(mode_).step_many([(batch[k][1], batch[k][2]) for k in keys])
                out.update(zip(keys, results, strict=True))
        except BaseException as e:  # every session of the failed step gets the error
            out = dict.fromkeys(batch, e)
        with self._turn:
            self._busy = False
            if blocks:
                self.steps += 1
                self.blocks += blocks
            self._results.update(out)
            self._turn.notify_all()
            return _unwrap(self._results.pop(key))

    def finish(self, mode: str, state):
        """``StreamingDecoder.finish`` (flush the rest) between batched steps."""
        with self._turn:
            while self._busy:
                self._turn.wait()
            self._busy = True
        try:
            return self.driver(mode).finish(state)
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()


def _unwrap(result):
    if isinstance(result, BaseException):
        raise result
    return result
