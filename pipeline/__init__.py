"""Luigi tasks of the image-to-video adaptation pipeline. `luigi --module pipeline <Task>` finds them all.

    GenerateSyn (SYN only)
    SourceIndex -> EstimateDepth(shard) -> SynthesizeSourceVideos(shard) -> ExtractFlow(source, shard) -+
    TargetIndex -> DecodeTargetVideos(shard) --------------------------------> ExtractFlow(target, shard) -+
                                             Train(benchmark, variant, seed) -> Evaluate -> RunBenchmark
                                                                                          -> RunExperiment
"""
from pipeline.index import GenerateSyn, SourceIndex, TargetIndex
from pipeline.decode import DecodeTargetVideos
from pipeline.depth import EstimateDepth
from pipeline.synthesis import SynthesizeSourceVideos
from pipeline.flow import ExtractFlow
from pipeline.train import Evaluate, Train
from pipeline.benchmark import PrepareData, RunBenchmark
from pipeline.experiment import RunExperiment

__all__ = ["GenerateSyn", "SourceIndex", "TargetIndex", "DecodeTargetVideos", "EstimateDepth",
           "SynthesizeSourceVideos", "ExtractFlow", "Train", "Evaluate", "PrepareData", "RunBenchmark",
           "RunExperiment"]
