"""Detectors: trigger-free questions asked of the suspect model. A built-in one is a module here, one name in the
import list of scan.py and its settings class in harden/config/detect.py; `stages.scan.detectors.<name>` turns it on."""

from harden.config.detect import DETECTORS, DetectorConfig, ScanConfig
from harden.detect.base import Detector, Finding, register_detector
from harden.detect.scan import ScanResult, inverted_asr, scan

__all__ = ["DETECTORS", "Detector", "DetectorConfig", "Finding", "ScanConfig", "ScanResult", "inverted_asr",
           "register_detector", "scan"]
