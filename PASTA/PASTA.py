import os
import tempfile
from typing import Optional

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text

# GUI-free helpers only: the model (torch) runs in a subprocess of the PASTALib CLI.
from PASTALogicLib.logic import SegmentationReportLogic, cli_command, parse_progress
from PASTASynthLib import dependencies
from PASTASynthLib.mrml import MRMLContext

#
# PASTA
#


class PASTA(ScriptedLoadableModule):
    """PASTA segmentation with structured reports, and few-shot annotation / fine-tuning."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PASTA Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PASTA")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerPASTA developers"]
        self.parent.helpText = _("""
Run the PASTA pan-tumor CT model on a CT: lesions become segments and each lesion gets an
editable structured report card (enhancement, location, size, shape, density,
heterogeneity, margin, invasion), exportable as JSON or DICOM SEG + SR. The Few-shot
section marks annotated cases as training data and fine-tunes the model on them.
See <a href="https://github.com/SlicerPASTA/SlicerPASTA#pasta">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Based on PASTA (Lei et al., "A Data-Efficient Pan-Tumor Foundation Model for Oncology CT
Interpretation", arXiv 2502.06171). Built on 3D Slicer's scripted module template.
""")


#
# PASTAParameterNode
#


@parameterNodeWrapper
class PASTAParameterNode:
    """Module state, saved with the scene.

    inputVolume - CT to segment. checkpointPath - PASTA state dict (.pth).
    device - "auto", "cpu" or "cuda". trainingSegmentation - annotated few-shot case.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    checkpointPath: str = ""
    device: str = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    trainingFolder: str = ""
    trainingSegmentation: vtkMRMLSegmentationNode
    useFineTuned: bool = False


#
# PASTAWidget
#


class PASTAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: MRML work goes to PASTALogic, long jobs to a CLI subprocess."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None
        self._reports = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PASTA.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PASTALogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.exportJsonButton.connect("clicked(bool)", self.onExportJson)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.markTrainingCaseButton.connect("clicked(bool)", self.onMarkTrainingCase)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.trainingFolderPathLineEdit.connect("currentPathChanged(QString)", self.refreshTrainingCases)

        self.ui.cancelButton.enabled = False
        self.ui.progressBar.hide()
        self.ui.fineTuneProgressBar.hide()
        self.initializeParameterNode()
        self.updateDependencyStatus()

    # -- parameter node -----------------------------------------------------------------

    def cleanup(self) -> None:
        self.removeObservers()
        self.onCancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[PASTAParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.ui.segmentButton.enabled = bool(p and p.inputVolume and self._process is None)
        self.ui.markTrainingCaseButton.enabled = bool(p and p.inputVolume and p.trainingSegmentation
                                                      and p.trainingFolder)
        self.ui.fineTuneButton.enabled = bool(p and p.trainingFolder and self._process is None)

    # -- dependencies -------------------------------------------------------------------

    def updateDependencyStatus(self) -> None:
        report = dependencies.check_dependencies()
        self.ui.dependencyLabel.text = report.message
        self.ui.installDependenciesButton.visible = not report.ok

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install PASTA dependencies."), waitCursor=True):
            dependencies.install_in_slicer()
        self.updateDependencyStatus()

    # -- long jobs (CLI subprocess streaming PROGRESS lines) ----------------------------

    def _runCli(self, args, progressBar, onFinished) -> None:
        import importlib.util

        if importlib.util.find_spec("PASTALib.cli") is None:
            slicer.util.infoDisplay(_("This action is available when the PASTALib command line (pasta) lands."))
            return
        command = cli_command(*args, python=slicer.app.pythonExecutable if hasattr(slicer.app, "pythonExecutable") else None)
        self._process = qt.QProcess()
        self._process.setProcessChannelMode(qt.QProcess.MergedChannels)

        def readOutput():
            text = bytes(self._process.readAllStandardOutput()).decode("utf-8", "replace")
            for line in text.splitlines():
                progress = parse_progress(line)
                if progress:
                    progressBar.value = int(progress[0] * 100)
                    self.ui.statusLabel.text = progress[1]

        def finished(exitCode, exitStatus=None):
            readOutput()
            self._process = None
            progressBar.hide()
            self.ui.cancelButton.enabled = False
            self._checkCanApply()
            onFinished(exitCode == 0)

        self._process.connect("readyReadStandardOutput()", readOutput)
        self._process.connect("finished(int,QProcess::ExitStatus)", finished)
        progressBar.value = 0
        progressBar.show()
        self.ui.cancelButton.enabled = True
        self._checkCanApply()
        self._process.start(command[0], command[1:])

    def onCancel(self) -> None:
        if self._process is not None:
            self._process.kill()

    # -- segmentation and reports -------------------------------------------------------

    def onSegment(self) -> None:
        p = self._parameterNode
        workDir = tempfile.mkdtemp(prefix="pasta_")
        ctPath = os.path.join(workDir, "ct.nii.gz")
        self.logic.saveVolume(p.inputVolume, ctPath)
        args = ["segment", "--input", ctPath, "--output", workDir, "--device", p.device]
        if p.checkpointPath:
            args += ["--checkpoint", p.checkpointPath]
        self._runCli(args, self.ui.progressBar, lambda ok: self.onSegmentFinished(ok, workDir))

    def onSegmentFinished(self, ok: bool, workDir: str) -> None:
        if not ok:
            slicer.util.errorDisplay(_("PASTA segmentation failed; see the Python console for the log."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the PASTA results."), waitCursor=True):
            segmentation, self._reports = self.logic.loadResults(workDir, self._parameterNode.inputVolume)
            self._parameterNode.outputSegmentation = segmentation
            self.showReportCards()

    def showReportCards(self) -> None:
        layout = self.ui.reportCardsWidget.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for index, report in enumerate(self._reports, start=1):
            card = ctk.ctkCollapsibleGroupBox()
            card.title = _("Lesion {index}").format(index=index)
            form = qt.QFormLayout(card)
            for key, value in report.items():
                edit = qt.QLineEdit(str(value))
                edit.connect("textEdited(QString)", lambda text, r=report, k=key: r.__setitem__(k, text))
                form.addRow(key, edit)
            layout.addWidget(card)

    def onExportJson(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Export reports"), "pasta_reports.json", "JSON (*.json)")
        if path:
            SegmentationReportLogic.save_reports(self._reports, path)

    def onExportDicom(self) -> None:
        slicer.util.infoDisplay(_("DICOM SEG + SR export is available when PASTALib's DICOM writer lands."))

    # -- few-shot -----------------------------------------------------------------------

    def onMarkTrainingCase(self) -> None:
        p = self._parameterNode
        caseId = self.ui.caseIdLineEdit.text.strip() or p.inputVolume.GetName().replace(" ", "_")
        with slicer.util.tryWithErrorDisplay(_("Could not export the training case."), waitCursor=True):
            self.logic.markTrainingCase(p.inputVolume, p.trainingSegmentation, p.trainingFolder, caseId)
        self.refreshTrainingCases()

    def refreshTrainingCases(self, path=None) -> None:
        self.ui.trainingCasesListWidget.clear()
        folder = self.ui.trainingFolderPathLineEdit.currentPath
        if folder and os.path.isdir(folder):
            for caseId in self.logic.listTrainingCases(folder):
                self.ui.trainingCasesListWidget.addItem(caseId)

    def onFineTune(self) -> None:
        p = self._parameterNode
        args = ["finetune", "--data", p.trainingFolder, "--device", p.device]
        if p.checkpointPath:
            args += ["--checkpoint", p.checkpointPath]
        self._runCli(args, self.ui.fineTuneProgressBar, self.onFineTuneFinished)

    def onFineTuneFinished(self, ok: bool) -> None:
        if ok:
            self.ui.useFineTunedCheckBox.enabled = True
        else:
            slicer.util.errorDisplay(_("Fine-tuning failed; see the Python console for the log."))


#
# PASTALogic
#


class PASTALogic(ScriptedLoadableModuleLogic):
    """Slicer-facing logic: delegates to PASTALogicLib.logic.SegmentationReportLogic."""

    def __init__(self, context: Optional[MRMLContext] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.core = SegmentationReportLogic(context=context or MRMLContext.from_slicer_application())

    def getParameterNode(self):
        return PASTAParameterNode(super().getParameterNode())

    @staticmethod
    def saveVolume(volumeNode, path: str) -> None:
        import SimpleITK as sitk
        from PASTASynthLib import mrml

        sitk.WriteImage(mrml.volume_to_sitk(volumeNode), path, True)

    def loadResults(self, workDir: str, ctNode):
        """Segmentation + reports written by ``pasta segment`` (labels.nii.gz, reports.json)."""
        import json

        from PASTALib.labels import LesionType

        names = {int(t): t.display_name for t in LesionType}
        segmentation = self.core.import_prediction(os.path.join(workDir, "labels.nii.gz"), ctNode, names)
        reportsPath = os.path.join(workDir, "reports.json")
        reports = json.load(open(reportsPath, encoding="utf-8")) if os.path.exists(reportsPath) else []
        return segmentation, reports

    def markTrainingCase(self, ctNode, segmentationNode, folder: str, caseId: str) -> dict:
        from PASTALib.labels import LesionType, Organ

        values = {o.display_name: int(o) for o in Organ}
        values.update({t.display_name: int(t) for t in LesionType})
        from PASTASynthLib import mrml

        for i, name in enumerate(mrml.segment_names(segmentationNode)):
            values.setdefault(name, 100 + i)  # user-named segments keep a stable, unused value
        return self.core.export_training_case(ctNode, segmentationNode, folder, caseId, values)

    def listTrainingCases(self, folder: str):
        return self.core.list_training_cases(folder)


#
# PASTATest
#


class PASTATest(ScriptedLoadableModuleTest):
    """Runs the same scenario functions as the pytest suite (PASTALogicLib.scenarios)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PASTAScenarios()

    def test_PASTAScenarios(self):
        from PASTALogicLib import scenarios

        self.delayDisplay("Running PASTA MRML scenarios")
        with tempfile.TemporaryDirectory() as workDir:
            scenarios.run_all(MRMLContext.from_slicer_application(), workDir)
        self.delayDisplay("Test passed")
