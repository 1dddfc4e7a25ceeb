import os
import pathlib
import tempfile
from typing import Annotated, Optional

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
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

# Refuse Slicer < 5.10 with a clear message before anything that needs a newer Slicer loads
# (dependencies is Python 3.9-safe; Slicer 5.8 has Python 3.9).
from PASTASlicerLib import dependencies

if dependencies.unsupported_slicer_message(slicer.app.majorVersion, slicer.app.minorVersion):
    raise RuntimeError(dependencies.unsupported_slicer_message(slicer.app.majorVersion, slicer.app.minorVersion))

# GUI-free helpers only: the model (torch) runs in a subprocess of the PASTALib CLI.
from PASTALogicLib.logic import (
    SegmentationReportLogic,
    fine_tuned_classes,
    fine_tuned_model_path,
    finetune_command,
    public_weights_installed,
    resolve_checkpoint,
    segment_command,
    weights_download_command,
)
from PASTALogicLib.reports import ReportEditError
from PASTASlicerLib import mrml
from PASTASlicerLib.jobs import BatchJob, nodes_in_scene
from PASTASlicerLib.mrml import MRMLContext

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

    inputVolume - CT to segment. checkpointPath - PASTA weights (.pth; empty: PASTA_final.pth in
    ~/.pasta/weights or $PASTA_WEIGHTS_DIR). device - "auto", "cpu" or "cuda". outputSegmentation -
    the PASTA segmentation whose report cards are shown. speed - "auto" (fast on a CPU, exact on CUDA),
    "exact" (every window) or "fast" (windows over the organs only, `pasta segment --fast`). trainingFolder / trainingSegmentation -
    few-shot training data. useFineTuned - segment with TRAINING_FOLDER/finetune/model_final.pth.

    Slicer's GUI connectors bind a ctkPathLineEdit only to a pathlib.Path and a QComboBox only to a
    str carrying Choice(...) (guiConnectors.py); an empty path reads back as Path("."): see
    ``optionalPath``.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    checkpointPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    speed: Annotated[str, Choice(["auto", "exact", "fast"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    trainingFolder: pathlib.Path
    trainingSegmentation: vtkMRMLSegmentationNode
    useFineTuned: bool = False


def optionalPath(path) -> Optional[str]:
    """A path parameter as a string, or None when the path line edit is empty (Path("") is ".")."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


#
# PASTAWidget
#


class PASTAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, dependencies.DependencyPanelMixin):
    """Thin GUI: MRML work goes to PASTALogic, long jobs to a CLI subprocess (PASTASlicerLib.jobs)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobKind = None
        self._jobFinished = None
        self._jobTimer = None
        self._installer = None
        self._installFinished = False
        self._cardsSegmentation = None

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
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.downloadWeightsButton.connect("clicked(bool)", self.onDownloadWeightsButton)
        self.ui.exportJsonButton.connect("clicked(bool)", self.onExportJson)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.markTrainingCaseButton.connect("clicked(bool)", self.onMarkTrainingCase)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)
        self.ui.trainingFolderPathLineEdit.connect("currentPathChanged(QString)", self.refreshTrainingCases)

        # Job progress: the job's reader thread only fills a queue; this GUI-thread timer polls it.
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(200)
        self._jobTimer.connect("timeout()", self.onJobTimer)

        self.ui.progressBar.hide()
        self.ui.fineTuneProgressBar.hide()
        self.initializeParameterNode()
        self.updateDependencyStatus()

    # -- parameter node -----------------------------------------------------------------

    def cleanup(self) -> None:
        self.removeObservers()
        self.cancelJob()
        if self._installer is not None:
            self._installer.cancel()
        if self._jobTimer is not None:
            self._jobTimer.stop()

    def onReload(self) -> None:
        """Reload also the helper packages: Slicer's reload re-runs only this file, so edits in
        PASTALogicLib / PASTASlicerLib would otherwise stay unloaded."""
        dependencies.unload_packages(("PASTALogicLib", "PASTASlicerLib"))
        ScriptedLoadableModuleWidget.onReload(self)

    def cancelJob(self) -> None:
        """Stop the running segmentation / fine-tuning subprocess and run its finish handler now."""
        if self._job is not None:
            self._job.cancel()
            self.onJobTimer()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        # A running job's results would go into nodes that are about to disappear: stop it.
        self.cancelJob()
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
        idle = self._job is None
        self.ui.segmentButton.enabled = bool(p and p.inputVolume) or self._jobKind == "segment"
        self.ui.markTrainingCaseButton.enabled = bool(p and p.inputVolume and p.trainingSegmentation
                                                      and optionalPath(p.trainingFolder))
        self.ui.fineTuneButton.enabled = bool(p and optionalPath(p.trainingFolder) and idle) or self._jobKind == "finetune"
        self.ui.checkpointStatusLabel.text = self.logic.checkpointStatus(p) if p else ""
        self.ui.downloadWeightsButton.visible = self._jobKind == "weights" or not public_weights_installed()
        self.ui.downloadWeightsButton.enabled = idle or self._jobKind == "weights"
        self.updateFineTunedStatus()
        segmentation = p.outputSegmentation if p else None
        if segmentation is not self._cardsSegmentation:
            self.showReportCards(segmentation)

    # -- long jobs (CLI subprocess streaming PROGRESS lines; the start button becomes Cancel) --

    def _startJob(self, kind: str, command, onFinished) -> None:
        """Start ``command`` (or a prepared, not yet started BatchJob) as the panel's job."""
        job = command if isinstance(command, BatchJob) else BatchJob(command)
        job.on_progress = self.onJobProgress
        self._job = job.start()
        self._jobKind, self._jobFinished = kind, onFinished
        bar, button = self._jobWidgets(kind)
        bar.value = 0
        bar.show()
        button.text = _("Cancel")
        button.toolTip = _("Stop the job (kills the process and its children)")
        self._checkCanApply()
        self._jobTimer.start()

    def _jobWidgets(self, kind: str):
        if kind == "segment":
            return self.ui.progressBar, self.ui.segmentButton
        if kind == "weights":
            return self.ui.progressBar, self.ui.downloadWeightsButton
        return self.ui.fineTuneProgressBar, self.ui.fineTuneButton

    def onJobProgress(self, fraction: float, message: str) -> None:
        self._jobWidgets(self._jobKind)[0].value = round(100 * fraction)
        self.ui.statusLabel.text = message

    def onJobTimer(self) -> None:
        if self._job is None:
            self._jobTimer.stop()
            return
        state = self._job.poll()
        if state == "running":
            return
        self._jobTimer.stop()
        job, kind, onFinished = self._job, self._jobKind, self._jobFinished
        self._job = self._jobKind = self._jobFinished = None
        bar, button = self._jobWidgets(kind)
        bar.hide()
        button.text = {"segment": _("Segment"), "weights": _("Download weights")}.get(kind, _("Fine-tune"))
        button.toolTip = ""
        self._checkCanApply()
        if state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled")
        elif state == "failed":
            self.ui.statusLabel.text = _("Failed")
            lastError = next((line for line in reversed(job.output_tail.splitlines()) if line.startswith("error:")), "")
            slicer.util.errorDisplay(
                _("The PASTA job failed (exit code {code}). {error}").format(code=job.returncode, error=lastError),
                detailedText=job.output_tail)
        else:
            onFinished()

    # -- segmentation and report cards --------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self._jobKind == "segment":
            self._job.cancel()
            return
        if self._job is not None:
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start PASTA segmentation."), waitCursor=True):
            checkpoint = self.logic.resolveCheckpoint(p)  # missing weights: says where to get them
            workDir = tempfile.mkdtemp(prefix="pasta_")
            ctPath = os.path.join(workDir, "ct.nii.gz")
            mrml.write_volume(p.inputVolume, ctPath)
            outDir = os.path.join(workDir, "out")
            ctNode = p.inputVolume
            self._startJob("segment", segment_command(ctPath, outDir, checkpoint=checkpoint, device=p.device,
                                                           extra=[] if p.speed == "auto" else [f"--{p.speed}"]),
                           lambda: self.onSegmentFinished(outDir, ctNode))
            self.ui.statusLabel.text = _("Segmenting with {checkpoint}").format(checkpoint=os.path.basename(checkpoint))

    def onDownloadWeightsButton(self) -> None:
        if self._jobKind == "weights":
            self._job.cancel()  # the partial file stays: the next download resumes it
            return
        if self._job is not None:
            return
        self._startJob("weights", weights_download_command(), self.onWeightsDownloaded)
        self.ui.statusLabel.text = _("Downloading PASTA_final.pth (about 1 GB)")

    def onWeightsDownloaded(self) -> None:
        self.ui.statusLabel.text = _("PASTA weights installed and checked")
        self._checkCanApply()

    def onSegmentFinished(self, outDir: str, ctNode) -> None:
        if self._parameterNode is None or not nodes_in_scene(self.logic.core.scene, ctNode):
            self.ui.statusLabel.text = _("The CT left the scene while PASTA ran: results not loaded ({path})").format(
                path=outDir)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the PASTA results."), waitCursor=True):
            imported = self.logic.core.import_segment_outputs(outDir, ctNode)
            self._parameterNode.outputSegmentation = imported.segmentation_node
            self.ui.statusLabel.text = _("{count} lesion(s) found").format(count=len(imported.cards))

    def showReportCards(self, segmentation) -> None:
        """One card per lesion from the card model: combo boxes for enumerated attributes, line edits
        for the size; every edit is validated by the logic and stored on the scene at once."""
        self._cardsSegmentation = segmentation
        layout = self.ui.reportCardsWidget.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        cards = self.logic.reportCards(segmentation)
        for card in cards or []:
            box = ctk.ctkCollapsibleGroupBox()
            box.title = card.title
            form = qt.QFormLayout(box)
            textLabel = qt.QLabel(card.text)
            textLabel.wordWrap = True
            textLabel.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
            for field in card.fields():
                if field.is_choice:
                    editor = qt.QComboBox()
                    editor.addItems(list(field.choices))
                    editor.currentText = field.value
                    editor.connect("activated(int)", lambda i, c=card.index, f=field.key, w=editor, t=textLabel:
                                   self.onCardEdited(c, f, w.currentText, w, t))
                else:
                    editor = qt.QLineEdit(field.value)
                    editor.toolTip = _("Z×X×Y in whole millimetres (craniocaudal × right-left × anterior-posterior)")
                    editor.connect("editingFinished()", lambda c=card.index, f=field.key, w=editor, t=textLabel:
                                   self.onCardEdited(c, f, w.text, w, t))
                confidence = card.confidence(field.key)
                label = field.label if confidence is None else f"{field.label} ({confidence:.0%})"
                form.addRow(label, editor)
            form.addRow(textLabel)
            layout.addWidget(box)
        hasCards = bool(cards)
        self.ui.exportJsonButton.enabled = hasCards
        ctNode = self.logic.sourceVolume(segmentation)
        self.ui.exportDicomButton.enabled = hasCards and self.logic.core.dicom_source_of(ctNode) is not None
        self.ui.exportDicomButton.toolTip = "" if self.ui.exportDicomButton.enabled else _(
            "Available when the CT was loaded from DICOM")

    def onCardEdited(self, lesionIndex: int, key: str, value: str, editor, textLabel) -> None:
        segmentation = self._cardsSegmentation
        try:
            stored = self.logic.core.edit_report(segmentation, lesionIndex, key, value)
        except ReportEditError as exc:
            slicer.util.warningDisplay(str(exc))
            stored = self.logic.core.report_cards(segmentation).card(lesionIndex).value(key)
        if hasattr(editor, "currentText"):
            editor.currentText = stored
        else:
            editor.text = stored
        textLabel.text = self.logic.core.report_cards(segmentation).card(lesionIndex).text

    def onExportJson(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Export reports"), "pasta_reports.json", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not export the reports."), waitCursor=True):
                self.logic.core.export_reports_json(self._cardsSegmentation, path)
                self.ui.statusLabel.text = _("Reports written to {path}").format(path=path)

    def onExportDicom(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, _("Folder for the DICOM SEG and SR"))
        if not folder:
            return
        segmentation = self._cardsSegmentation
        if self.slicerLine() < (5, 12):
            self.exportDicomInSubprocess(segmentation, folder)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not export DICOM SEG + SR."), waitCursor=True):
            files = self.logic.core.export_dicom(segmentation, self.logic.sourceVolume(segmentation), folder)
            self.ui.statusLabel.text = _("Wrote {files}").format(
                files=", ".join(os.path.basename(str(f)) for f in files.values()))

    def exportDicomInSubprocess(self, segmentation, folder: str) -> None:
        """Slicer 5.10: pydicom 3 / highdicom 0.27 live in PASTA's private folder, used only by this
        subprocess (Slicer's own pydicom 2.4.4 stays as it is)."""
        from PASTALogicLib import dicom_export_job

        if self._job is not None:
            slicer.util.warningDisplay(_("Wait for the running job to finish (or cancel it) first."))
            return
        workDir = tempfile.mkdtemp(prefix="pasta_dicom_")
        with slicer.util.tryWithErrorDisplay(_("Could not export DICOM SEG + SR."), waitCursor=True):
            inputs = dicom_export_job.write_inputs(
                workDir, *self.logic.core.dicom_export_inputs(segmentation, self.logic.sourceVolume(segmentation)))
            job = BatchJob(dicom_export_job.command(inputs, folder),
                           env=dicom_export_job.environment(dependencies.private_site()))
            self._startJob("segment", job, lambda: self.ui.statusLabel.setText(
                _("Wrote DICOM SEG + SR to {folder}").format(folder=folder)))
            self.ui.statusLabel.text = _("Exporting DICOM SEG + SR")

    # -- few-shot -----------------------------------------------------------------------

    def onMarkTrainingCase(self) -> None:
        p = self._parameterNode
        caseId = self.ui.caseIdLineEdit.text.strip() or p.inputVolume.GetName().replace(" ", "_")
        with slicer.util.tryWithErrorDisplay(_("Could not export the training case."), waitCursor=True):
            self.logic.core.export_training_case(p.inputVolume, p.trainingSegmentation, optionalPath(p.trainingFolder), caseId)
        self.refreshTrainingCases()

    def refreshTrainingCases(self, path=None) -> None:
        self.ui.trainingCasesListWidget.clear()
        folder = self.ui.trainingFolderPathLineEdit.currentPath
        if folder and os.path.isdir(folder):
            for caseId in self.logic.core.list_training_cases(folder):
                self.ui.trainingCasesListWidget.addItem(caseId)
        self.updateFineTunedStatus()

    def onFineTuneButton(self) -> None:
        if self._jobKind == "finetune":
            self._job.cancel()
            return
        if self._job is not None:
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start fine-tuning."), waitCursor=True):
            cases = self.logic.core.list_training_cases(optionalPath(p.trainingFolder))
            if len(cases) < 2:
                raise ValueError(_("Fine-tuning needs at least 2 marked training cases (one is held out); "
                                   "{count} marked.").format(count=len(cases)))
            init = resolve_checkpoint(optionalPath(p.checkpointPath))  # the PASTA weights to start from
            folds = str(max(2, min(5, len(cases))))
            command = finetune_command(optionalPath(p.trainingFolder), init=init, device=p.device, extra=["--folds", folds])
            self._startJob("finetune", command, self.onFineTuneFinished)
            self.ui.statusLabel.text = _("Fine-tuning on {count} case(s)").format(count=len(cases))

    def onFineTuneFinished(self) -> None:
        self.ui.statusLabel.text = _("Fine-tuning finished")
        self.updateFineTunedStatus()
        if self.ui.useFineTunedCheckBox.enabled and self._parameterNode is not None:
            self._parameterNode.useFineTuned = True

    def updateFineTunedStatus(self) -> None:
        p = self._parameterNode
        folder = optionalPath(p.trainingFolder) if p else None
        model = fine_tuned_model_path(folder) if folder else None
        available = bool(model and model.is_file())
        self.ui.useFineTunedCheckBox.enabled = available
        if available:
            self.ui.fineTunedModelLabel.text = _("Fine-tuned model: {path}\nClasses: {classes}").format(
                path=model, classes=", ".join(fine_tuned_classes(folder)))
        else:
            self.ui.fineTunedModelLabel.text = _("No fine-tuned model yet: mark at least 2 cases, then Fine-tune.")


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
    def resolveCheckpoint(parameterNode):
        """The weights to segment with (MissingWeightsError says where to get PASTA_final.pth; CheckpointError
        when the file cannot segment, e.g. PASTA_final.pth itself, saying to fine-tune it first)."""
        return resolve_checkpoint(optionalPath(parameterNode.checkpointPath), parameterNode.useFineTuned,
                                  optionalPath(parameterNode.trainingFolder), for_segmentation=True)

    def checkpointStatus(self, parameterNode) -> str:
        try:
            return _("Weights: {path}").format(path=self.resolveCheckpoint(parameterNode))
        except Exception as exc:  # shown, not raised: the user fixes it before pressing Segment
            return str(exc)

    def reportCards(self, segmentation):
        """The report cards of a PASTA segmentation, or None for any other segmentation."""
        if segmentation is None or self.core.report_node_of(segmentation) is None:
            return None
        return self.core.report_cards(segmentation)

    def sourceVolume(self, segmentation):
        """The CT a PASTA segmentation was imported for."""
        from PASTALogicLib.logic import SOURCE_VOLUME_ATTRIBUTE

        nodeId = segmentation.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) if segmentation is not None else None
        return self.core.scene.GetNodeByID(nodeId) if nodeId else None


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

        self.delayDisplay("Running PASTA MRML scenarios (import, report cards, checkpoints, fine-tune)")
        with tempfile.TemporaryDirectory() as workDir:
            scenarios.run_all(MRMLContext.from_slicer_application(), workDir, run_finetune=True)
        self.delayDisplay("Test passed")
