"""Clean-data sources and splits. Images stay uint8 NHWC in memory; batches are converted on the fly."""

from harden.ingest.data.sources import ImageSet, load_images, stratified_split

__all__ = ["ImageSet", "load_images", "stratified_split"]
