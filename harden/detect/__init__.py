"""Detectors: trigger-free questions asked of the suspect model. Adding one is a module plus one name in the import
list of scan.py; `stages.scan.detectors.<name>` turns it on."""

from harden.detect.base import DETECTORS, Detector, DetectorConfig, Finding, register_detector
from harden.detect.scan import ScanConfig, ScanResult, inverted_asr, scan

__all__ = ["DETECTORS", "Detector", "DetectorConfig", "Finding", "ScanConfig", "ScanResult", "inverted_asr",
           "register_detector", "scan"]
