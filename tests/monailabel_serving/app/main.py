"""A minimal MONAI Label app serving every bundle under ``<app>/model/`` with MONAI Label's own ``BundleInferTask``.

The test fixture of the MONAI Label integration tests (nothing can be downloaded, so the stock ``monaibundle`` sample
app is not used); it behaves like that app for local bundles: one inferer per bundle folder, and a trainer only
where MONAI Label's ``BundleTrainTask`` finds one valid (none for these bundles).
"""

import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        model_dir = os.path.join(app_dir, "model")
        names = conf.get("models", "")
        names = [n.strip() for n in names.split(",") if n.strip()] or sorted(os.listdir(model_dir))
        self.bundles = {n: os.path.join(model_dir, n) for n in names}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_tta bundles",
            description="monai_tta test-time adaptation bundles served by BundleInferTask",
            version="0.2.0",
        )

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            task = BundleInferTask(path, self.conf)
            if task.is_valid():
                infers[name] = task
        return infers

    def init_trainers(self):
        trainers = {}
        for name, path in self.bundles.items():
            task = BundleTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {}
