import json
import os
import shutil
import tempfile
import time
from typing import Annotated, Optional

import ctk  # noqa: F401  (the scripted-module template imports it; the contract test checks)
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTextNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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

# Only light, GUI-free helpers at top level: PASTALib (enums, synthesis, anatomy) is
# imported inside the methods that need it, after the dependency check.
from PASTASlicerLib import mrml
from PASTASlicerLib.jobs import BatchJob
from PASTASlicerLib.mrml import MRMLContext
from PASTASynthLib import totalsegmentator_job
from PASTASynthLib.logic import SynthesisLogic, generate_command
from PASTASynthLib.reader_study import ACCURACY_ANCHORS, REALISM_ANCHORS, ReaderStudyLogic

# The report vocabulary (standard library only) fills the parameter node's choices.
from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface, wordings


#
# PASTASynth
#


class PASTASynth(ScriptedLoadableModule):
    """Lesion synthesis (PASTA-Gen) with attribute sliders, and a blinded realism review."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PASTA Lesion Synthesis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PASTA")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerPASTA developers"]
        self.parent.helpText = _("""
Insert a synthetic lesion (15 PASTA-Gen types in 10 organs) into a healthy organ of a CT:
pick the CT and its organ segmentation, a lesion type, set size, shape, density,
heterogeneity, margin and invasion, click a location (or let the module sample one),
preview and apply. The result is a new CT, an organ + lesion segmentation and the
structured report. The Reader study section runs a blinded realism review (Turing test).
See <a href="https://github.com/SlicerPASTA/SlicerPASTA#pastasynth">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Based on PASTA (Lei et al., "A Data-Efficient Pan-Tumor Foundation Model for Oncology CT
Interpretation", arXiv 2502.06171). Built on 3D Slicer's scripted module template.
""")


#
# PASTASynthParameterNode
#


@parameterNodeWrapper
class PASTASynthParameterNode:
    """Module state, saved with the scene.

    inputVolume - CT to insert the lesion into (never modified).
    organSegmentation - organ masks (TotalSegmentator names or PASTA organ names).
    locationPoints - optional lesion centre; ignored when sampleLocation is set.
    size* - lesion extent in mm along the patient's right-left (X), anterior-posterior (Y)
    and inferior-superior (Z) axes; shape ... invasion - report wording.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    organSegmentation: vtkMRMLSegmentationNode
    locationPoints: vtkMRMLMarkupsFiducialNode
    lesionType: str = "liver_tumor"
    sampleLocation: bool = True
    sizeX: Annotated[float, WithinRange(2.0, 150.0)] = 25.0
    sizeY: Annotated[float, WithinRange(2.0, 150.0)] = 25.0
    sizeZ: Annotated[float, WithinRange(2.0, 150.0)] = 25.0
    # The report vocabulary (PASTALib.report.attributes). Slicer binds a QComboBox to a str only
    # with Choice(...) (guiConnectors.py), and fills it from the choices.
    shape: Annotated[str, Choice(list(wordings("shape")))] = Shape.ROUND.value
    density: Annotated[str, Choice(list(wordings("density")))] = Density.HYPO.value
    heterogeneity: Annotated[str, Choice(list(wordings("heterogeneity")))] = Heterogeneity.HOMOGENEOUS.value
    surface: Annotated[str, Choice(list(wordings("surface")))] = Surface.WELL_DEFINED.value
    invasion: Annotated[str, Choice(list(wordings("invasion")))] = Invasion.NONE.value
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputReport: vtkMRMLTextNode


#
# PASTASynthWidget
#


class PASTASynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, dependencies.DependencyPanelMixin):
    """Thin GUI: every action is a call into PASTASynthLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._report = None
        self._job = None
        self._jobTimer = None
        self._installer = None
        self._installFinished = False
        self._tsJob = None
        self._tsTimer = None
        self._tsFinish = None
        self._updatingType = False
        self.readerStudyPanel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PASTASynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PASTASynthLogic()

        # Light import (enums only): the combo boxes list exactly the library's vocabularies.
        from PASTALib.labels import LesionType

        for lesion_type in LesionType:
            self.ui.lesionTypeComboBox.addItem(lesion_type.display_name, lesion_type.slug)
        for combo, enum in self._attributeCombos(Shape, Density, Heterogeneity, Surface, Invasion):
            combo.clear()
            for member in enum:
                combo.addItem(member.value)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.runTotalSegmentatorButton.connect("clicked(bool)", self.onRunTotalSegmentator)
        self.ui.lungMaskButton.connect("clicked(bool)", self.onLungMask)
        # Selecting a CT or segmentation only updates text; the phase is measured on demand.
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateEnhancement)
        self.ui.organSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateEnhancement)
        self.ui.detectPhaseButton.connect("clicked(bool)", self.onDetectPhase)
        self.ui.locationPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.locationPlaceWidget.setCurrentNode)
        self.ui.lesionTypeComboBox.connect("currentIndexChanged(int)", self.onLesionTypeChanged)
        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.batchGenerateButton.connect("clicked(bool)", self.onBatchGenerate)
        # The reader study: its own widget (UI/ReaderStudyPanel.ui), above the panel's end spacer.
        readerStudyWidget = slicer.util.loadUI(self.resourcePath("UI/ReaderStudyPanel.ui"))
        uiWidget.layout().insertWidget(uiWidget.layout().count() - 1, readerStudyWidget)
        self.readerStudyPanel = ReaderStudyPanel(readerStudyWidget, self.logic.synthesis.context)
        # Shortcuts live on the main window so they work while the reader scrolls a slice view.
        self.readerStudyPanel.setup(slicer.util.mainWindow() or self.parent)

        # Batch progress: the job's reader thread only fills a queue; this GUI-thread
        # timer polls it (no thread ever touches Qt).
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(200)
        self._jobTimer.connect("timeout()", self.onJobTimer)
        self._tsTimer = qt.QTimer()
        self._tsTimer.setInterval(200)
        self._tsTimer.connect("timeout()", self.onTotalSegmentatorTimer)

        self.ui.cancelButton.enabled = False
        self.ui.undoButton.enabled = False
        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self.updateDependencyStatus()
        self.onLesionTypeChanged()

    def _attributeCombos(self, shape, density, heterogeneity, surface, invasion):
        return [(self.ui.shapeComboBox, shape), (self.ui.densityComboBox, density),
                (self.ui.heterogeneityComboBox, heterogeneity), (self.ui.surfaceComboBox, surface),
                (self.ui.invasionComboBox, invasion)]

    # -- parameter node -----------------------------------------------------------------

    def cleanup(self) -> None:
        self.cancelJobs()
        if self._installer is not None:
            self._installer.cancel()
        if self._jobTimer is not None:
            self._jobTimer.stop()
        if self._tsTimer is not None:
            self._tsTimer.stop()
        if self.readerStudyPanel is not None:
            self.readerStudyPanel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.readerStudyPanel.setEntered(True)

    def exit(self) -> None:
        self.readerStudyPanel.setEntered(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onReload(self) -> None:
        """Reload also the helper packages: Slicer's reload re-runs only this file, so edits in
        PASTASynthLib / PASTASlicerLib would otherwise stay unloaded (the next import reads them again)."""
        dependencies.unload_packages(("PASTASynthLib", "PASTASlicerLib"))
        ScriptedLoadableModuleWidget.onReload(self)

    def cancelJobs(self) -> None:
        """Stop the running subprocesses (batch generation, TotalSegmentator) and poll them once,
        so that their finish handlers run now and see the outcome."""
        if self._job is not None:
            self._job.cancel()
            self.onJobTimer()
        if self._tsJob is not None:
            self._tsJob.cancel()
            self.onTotalSegmentatorTimer()

    def onSceneStartClose(self, caller, event) -> None:
        # Results of a running job would go into nodes that are about to disappear: stop it.
        self.cancelJobs()
        self.setParameterNode(None)
        if self.readerStudyPanel is not None:
            self.readerStudyPanel.onSceneStartClose()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[PASTASynthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            index = self.ui.lesionTypeComboBox.findData(self._parameterNode.lesionType)
            if index >= 0:
                self.ui.lesionTypeComboBox.currentIndex = index
            # connectGui refilled the attribute combo boxes from their Choice(...) lists (all items
            # enabled): re-apply what the lesion type allows.
            self.onLesionTypeChanged()
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None:
            return  # Apply is the job's Cancel button while a batch runs
        ready = bool(self._parameterNode and self._parameterNode.inputVolume
                     and self._parameterNode.organSegmentation)
        self.ui.applyButton.enabled = ready
        self.ui.previewButton.enabled = ready
        self.ui.applyButton.toolTip = _("Insert the lesion") if ready else _("Select a CT and its organ segmentation")
        self.ui.undoButton.enabled = bool(self._parameterNode and self._parameterNode.outputVolume)

    # -- inputs -------------------------------------------------------------------------

    def onLesionTypeChanged(self, index=None) -> None:
        """Sliders get the type's size range; only the type's allowed values stay enabled."""
        slug = self.ui.lesionTypeComboBox.currentData
        if not slug or self._updatingType:
            return
        from PASTALib.synth import allowed_values

        self._updatingType = True
        try:
            if self._parameterNode:
                self._parameterNode.lesionType = slug
            allowed = allowed_values(slug)
            for key, combo in (("shape", self.ui.shapeComboBox), ("density", self.ui.densityComboBox),
                               ("heterogeneity", self.ui.heterogeneityComboBox), ("surface", self.ui.surfaceComboBox),
                               ("invasion", self.ui.invasionComboBox)):
                self._enableComboItems(combo, allowed[key])
            low, high = self.logic.synthesis.size_range_mm(slug)
            typical = self.logic.synthesis.typical_size_mm(slug)
            for slider in (self.ui.sizeXSliderWidget, self.ui.sizeYSliderWidget, self.ui.sizeZSliderWidget):
                slider.minimum, slider.maximum = low, high
                if not low <= slider.value <= high:
                    slider.value = typical
            self.updateEnhancement()
        finally:
            self._updatingType = False

    @staticmethod
    def _enableComboItems(combo, allowed) -> None:
        model = combo.model()
        for i in range(combo.count):
            item = model.item(i)
            if item is not None:
                item.setEnabled(combo.itemText(i) in allowed)
        if combo.currentText not in allowed and allowed:
            combo.currentIndex = combo.findText(allowed[0])

    def updateEnhancement(self, node=None) -> None:
        """Cheap (runs on every selector change): the type's template phases only. Measuring the
        phase reads the whole CT, so it runs when the user clicks Detect phase."""
        slug = self.ui.lesionTypeComboBox.currentData
        try:
            self.ui.enhancementLabel.text = self.logic.enhancementText(slug) if slug else ""
        except Exception as exc:  # noqa: BLE001 -- display only: never block the panel
            self.ui.enhancementLabel.text = str(exc)

    def onDetectPhase(self) -> None:
        slug = self.ui.lesionTypeComboBox.currentData
        ct = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.organSegmentationSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Phase detection failed."), waitCursor=True):
            self.ui.enhancementLabel.text = self.logic.enhancementText(slug, ct, segmentation, detect=True)

    # -- TotalSegmentator (PythonSlicer subprocess: the GUI stays live, the button is Cancel) ----

    def onRunTotalSegmentator(self) -> None:
        if self._tsJob is not None:
            self._tsJob.cancel()
            self.onTotalSegmentatorTimer()
            return
        ct = self._parameterNode.inputVolume if self._parameterNode else None
        if ct is None:
            slicer.util.warningDisplay(_("Select a CT volume first."))
            return
        fast = self.ui.totalSegmentatorFastCheckBox.checked
        allowDownload = self.ui.totalSegmentatorAllowDownloadCheckBox.checked
        workDir = tempfile.mkdtemp(prefix="pasta_totalseg_")
        with slicer.util.tryWithErrorDisplay(_("Cannot start TotalSegmentator."), waitCursor=True):
            ctPath = os.path.join(workDir, "ct.nii")
            mrml.write_volume(ct, ctPath)
            labelPath = os.path.join(workDir, "organs.nii.gz")
            command = totalsegmentator_job.command(ctPath, labelPath, fast=fast, device="auto",
                                                   allow_download=allowDownload)
            self._tsJob = BatchJob(command, on_progress=self.onTotalSegmentatorProgress,
                                   on_line=self.onTotalSegmentatorLine).start()
            self._tsFinish = (labelPath, ct, workDir)
            self.ui.runTotalSegmentatorButton.text = _("Cancel TotalSegmentator")
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("TotalSegmentator started")
            self._tsTimer.start()
        if self._tsJob is None:
            shutil.rmtree(workDir, ignore_errors=True)

    def onTotalSegmentatorProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = message

    def onTotalSegmentatorLine(self, line: str) -> None:
        if line.strip():
            self.ui.statusLabel.text = line.strip()[:200]

    def onTotalSegmentatorTimer(self) -> None:
        """Poll the TotalSegmentator job; when it ends, import its labels if the CT is still in the
        scene (a closed scene or deleted CT discards them, never raises)."""
        if self._tsJob is None:
            self._tsTimer.stop()
            return
        state = self._tsJob.poll()
        if state == "running":
            return
        self._tsTimer.stop()
        job, self._tsJob = self._tsJob, None
        labelPath, ct, workDir = self._tsFinish
        self._tsFinish = None
        self.ui.runTotalSegmentatorButton.text = _("Run TotalSegmentator")
        self.ui.progressBar.hide()
        try:
            if state == "cancelled":
                self.ui.statusLabel.text = _("TotalSegmentator cancelled")
            elif state == "failed":
                self.ui.statusLabel.text = _("TotalSegmentator failed")
                lastError = next((line for line in reversed(job.output_tail.splitlines()) if line.startswith("error:")),
                                 "")
                slicer.util.errorDisplay(_("TotalSegmentator failed (exit code {code}). {error}").format(
                    code=job.returncode, error=lastError), detailedText=job.output_tail)
            else:
                with slicer.util.tryWithErrorDisplay(_("Could not load the TotalSegmentator labels."), waitCursor=True):
                    segmentation = self.logic.synthesis.import_totalsegmentator_labels(labelPath, ct)
                    if segmentation is None or self._parameterNode is None:
                        self.ui.statusLabel.text = _("The CT left the scene while TotalSegmentator ran: "
                                                     "labels discarded")
                    else:
                        self._parameterNode.organSegmentation = segmentation
                        self.ui.statusLabel.text = _("TotalSegmentator finished: {name}").format(
                            name=segmentation.GetName())
                        self.updateEnhancement()
        finally:
            shutil.rmtree(workDir, ignore_errors=True)

    def onLungMask(self) -> None:
        ct = self._parameterNode.inputVolume if self._parameterNode else None
        if ct is None:
            slicer.util.warningDisplay(_("Select a CT volume first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Lung mask failed."), waitCursor=True):
            self._parameterNode.organSegmentation = self.logic.synthesis.lung_mask_segmentation(ct)

    # -- synthesis ----------------------------------------------------------------------

    def _showReport(self, report: dict, prefix: str = "") -> None:
        self._report = report
        self.ui.reportTextEdit.plainText = prefix + SynthesisLogic.report_text(report) + "\n\n" + json.dumps(
            report, indent=2, ensure_ascii=False)

    def onPreview(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Lesion preview failed."), waitCursor=True):
            preview = self.logic.previewFromParameterNode(self._parameterNode)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume,
                                             foreground=preview.volume_node, foregroundOpacity=1.0)
            self._showReport(preview.report, prefix=_("Preview: "))
            self.ui.statusLabel.text = _("Preview shown (Apply to keep it, Cancel to discard)")
            self.ui.cancelButton.enabled = True

    def onApply(self, checked=False) -> None:
        if self._job is not None:  # Apply is Cancel while a batch job runs
            self._job.cancel()
            self.onJobTimer()
            return
        with slicer.util.tryWithErrorDisplay(_("Lesion synthesis failed."), waitCursor=True):
            output = self.logic.synthesizeFromParameterNode(self._parameterNode)
            self._showReport(output.report)
            slicer.util.setSliceViewerLayers(background=output.volume_node, foreground=None, fit=False)
            output.segmentation_node.CreateClosedSurfaceRepresentation()
            self.ui.cancelButton.enabled = False
            self.ui.undoButton.enabled = True
            self.ui.statusLabel.text = _("Created {volume}, {segmentation}").format(
                volume=output.volume_node.GetName(), segmentation=output.segmentation_node.GetName())

    def onCancel(self) -> None:
        self.logic.synthesis.clear_preview()
        if self._parameterNode and self._parameterNode.inputVolume:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, foreground=None)
        self.ui.cancelButton.enabled = False
        self.ui.statusLabel.text = _("Preview discarded")

    def onUndo(self) -> None:
        self.logic.removeOutputs(self._parameterNode)
        if self._parameterNode.inputVolume:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, foreground=None)
        self.ui.undoButton.enabled = False
        self.ui.reportTextEdit.plainText = ""
        self._report = None
        self.ui.statusLabel.text = _("Removed the synthetic CT, segmentation and report")

    def onCopyReport(self) -> None:
        text = SynthesisLogic.report_text(self._report) if self._report else self.ui.reportTextEdit.plainText
        qt.QApplication.clipboard().setText(text)

    def onSaveReport(self) -> None:
        if not self._report:
            slicer.util.warningDisplay(_("No report yet: apply a synthesis first."))
            return
        path = qt.QFileDialog.getSaveFileName(None, _("Save report"), "report.json", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not save the report."), waitCursor=True):
                SynthesisLogic.save_report(self._report, path)

    # -- batch generation (subprocess) --------------------------------------------------

    def onBatchGenerate(self) -> None:
        if self._job is not None:
            return
        output = self.ui.batchOutputPathLineEdit.currentPath
        if not output:
            slicer.util.warningDisplay(_("Choose an output folder."))
            return
        templates = self.ui.batchInputPathLineEdit.currentPath
        if not templates:
            slicer.util.warningDisplay(_("Choose the template folder (<name>/ct.nii.gz + <name>/organs.nii.gz) or CSV."))
            return
        command = generate_command(output, templates=templates, per_type=self.ui.batchCountSpinBox.value,
                                   seed=self._parameterNode.seed if self._parameterNode else None)
        self._job = BatchJob(command, on_progress=self.onJobProgress).start()
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.applyButton.text = _("Cancel")
        self.ui.applyButton.toolTip = _("Stop the batch generation (kills the process and its children)")
        self.ui.applyButton.enabled = True
        self.ui.previewButton.enabled = False
        self.ui.batchGenerateButton.enabled = False
        self.ui.statusLabel.text = _("Batch generation started")
        self._jobTimer.start()

    def onJobProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = message

    def onJobTimer(self) -> None:
        if self._job is None:
            self._jobTimer.stop()
            return
        state = self._job.poll()
        if state == "running":
            return
        self._jobTimer.stop()
        job, self._job = self._job, None
        self.ui.applyButton.text = _("Apply")
        self.ui.batchGenerateButton.enabled = True
        self.ui.progressBar.hide()
        self._checkCanApply()  # copes with no parameter node (scene closing)
        if state == "finished":
            self.ui.statusLabel.text = _("Batch generation finished")
        elif state == "cancelled":
            self.ui.statusLabel.text = _("Batch generation cancelled")
        else:
            self.ui.statusLabel.text = _("Batch generation failed")
            slicer.util.errorDisplay(_("Batch generation failed (exit code {code}).").format(code=job.returncode),
                                     detailedText=job.output_tail)


#
# ReaderStudyPanel
#


class ReaderStudyPanel:
    """The blinded reader-study section of the PASTASynth panel, built from UI/ReaderStudyPanel.ui.

    Thin: ReaderStudyLogic (PASTASynthLib.reader_study) shows the anonymised case and commits
    each answer at once through PASTALib.review; nothing is buffered here except the accuracy
    ratings and reason typed for the case on screen, which the realism rating (button or key
    1-5) submits together."""

    #: Keys that must not rate a case twice: key ratings within this many seconds of a case
    #: appearing are ignored (a double press would otherwise also rate the next case).
    KEY_RATING_DEBOUNCE_S = 0.4

    def __init__(self, widget, context) -> None:
        self.widget = widget
        self.ui = slicer.util.childWidgetVariables(widget)
        self.logic = ReaderStudyLogic(context)
        self._shortcuts = []
        self._attributeRows = {}
        self._caseShownAt = 0.0
        self._entered = False

    def _likertButtons(self):
        return [self.ui.likert1Button, self.ui.likert2Button, self.ui.likert3Button,
                self.ui.likert4Button, self.ui.likert5Button]

    def setup(self, shortcutParent) -> None:
        """Wire the buttons, build one rating row per report attribute, add the keyboard shortcuts
        (on ``shortcutParent``: the main window, so they work while a slice view has the focus)."""
        from PASTALib.review import ATTRIBUTES

        self.ui.openStudyButton.connect("clicked(bool)", self.onOpenStudy)
        self.ui.closeStudyButton.connect("clicked(bool)", self.onCloseStudy)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCase)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        for score, button in enumerate(self._likertButtons(), start=1):
            button.connect("clicked(bool)", lambda checked=False, s=score: self.onLikert(s))
        for score, (button, anchor) in enumerate(zip(self._likertButtons(), REALISM_ANCHORS), start=1):
            button.toolTip = _("Realism {score}: {anchor} (key {score}; saves the case and shows the next)").format(
                score=score, anchor=anchor.lower())
        # One row per report attribute: its wording and an optional 1-5 accuracy rating.
        grid = self.ui.attributeRatingsGroupBox.layout()
        for row, attribute in enumerate(ATTRIBUTES):
            label = qt.QLabel()
            label.wordWrap = True
            grid.addWidget(label, row, 0)
            group = qt.QButtonGroup(self.ui.attributeRatingsGroupBox)
            buttons = []
            for score in range(1, 6):
                radio = qt.QRadioButton(str(score))
                radio.toolTip = _("{attribute} accuracy {score}: {anchor}").format(
                    attribute=attribute.capitalize(), score=score, anchor=ACCURACY_ANCHORS[score - 1].lower())
                group.addButton(radio, score)
                grid.addWidget(radio, row, score)
                buttons.append(radio)
            self._attributeRows[attribute] = (label, group, buttons)
        # Enabled only while the module is shown and a study is open.
        keys = [(str(score), lambda s=score: self.onLikertKey(s)) for score in range(1, 6)]
        keys += [(qt.Qt.Key_Left, self.onPreviousCase), (qt.Qt.Key_PageUp, self.onPreviousCase),
                 (qt.Qt.Key_Right, self.onNextCase), (qt.Qt.Key_PageDown, self.onNextCase)]
        for key, slot in keys:
            shortcut = qt.QShortcut(qt.QKeySequence(key), shortcutParent)
            shortcut.setContext(qt.Qt.WindowShortcut)
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)
        self._showCase(None)

    def setEntered(self, entered: bool) -> None:
        """The module was shown (True) or left (False)."""
        self._entered = entered
        self._updateShortcuts()

    def _updateShortcuts(self) -> None:
        active = self._entered and self.logic.is_open
        for shortcut in self._shortcuts:
            shortcut.setEnabled(active)

    def onSceneStartClose(self) -> None:
        if self.logic.is_open:
            self.logic.close()  # its nodes go with the scene; every answer is already saved
            self._showCase(None)
            self.ui.readerStudyStatusLabel.text = _("The scene was closed: open the study again to continue "
                                                    "(your answers are saved).")

    def cleanup(self) -> None:
        self.logic.close()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
        self._shortcuts = []

    def _reviewErrorDisplay(self, exc) -> None:
        """A clear message for each PASTALib review error (the library's text says what to do)."""
        from PASTALib.review import AnswerLockedError, RatingRangeError, StudyTamperedError, UnknownReaderError

        if isinstance(exc, UnknownReaderError):
            title = _("You are not registered as a reader of this study. Check the spelling of your name, "
                      "or ask the study coordinator to add you (pasta review add-reader STUDY_DIR NAME).")
        elif isinstance(exc, StudyTamperedError):
            title = _("The study files were changed after the study was created, so this case cannot be "
                      "read. Stop and tell the study coordinator.")
        elif isinstance(exc, AnswerLockedError):
            title = _("This case is already answered and this study does not allow changing answers.")
        elif isinstance(exc, RatingRangeError):
            title = _("Invalid rating.")
        else:
            title = _("Reader study")
        self.ui.readerStudyStatusLabel.text = str(exc)
        slicer.util.errorDisplay(title + "\n\n" + str(exc), windowTitle=_("Reader study"))

    def _runReview(self, call, *args):
        """(True, result) of a reader-study logic call, or (False, None) after showing a review error."""
        from PASTALib.review import ReviewError

        try:
            with slicer.util.WaitCursor():
                return True, call(*args)
        except ReviewError as exc:
            self._reviewErrorDisplay(exc)
            return False, None

    def onOpenStudy(self) -> None:
        reader = self.ui.readerNameLineEdit.text.strip()
        folder = self.ui.studyFolderPathLineEdit.currentPath
        ok, view = self._runReview(self.logic.open, folder, reader)
        if not ok:
            return
        ok, shown = self._runReview(self.logic.show_current)
        answered, total = self.logic.progress()
        if ok:
            self._showCase(shown)
        if view is None:
            status = _("All {total} cases are answered. Thank you! (Previous shows your answers.)").format(total=total)
        elif answered:
            status = _("Welcome back, {reader}: {answered} of {total} answered; resuming at case {position}.").format(
                reader=reader, answered=answered, total=total, position=view.position)
        else:
            status = _("Study opened for {reader}: {total} cases.").format(reader=reader, total=total)
        self.ui.readerStudyStatusLabel.text = status
        self._updateShortcuts()

    def onCloseStudy(self) -> None:
        self.logic.close()
        self._showCase(None)
        self.ui.readerStudyStatusLabel.text = _("Study closed; every answer is saved.")
        self._updateShortcuts()

    def _requireOpenStudy(self) -> bool:
        if not self.logic.is_open:
            self.ui.readerStudyStatusLabel.text = _("Open a study first (reader name + study folder).")
            return False
        return True

    def onPreviousCase(self) -> None:
        if self._requireOpenStudy():
            ok, shown = self._runReview(self.logic.previous)
            self._showCase(shown)

    def onNextCase(self) -> None:
        if self._requireOpenStudy():
            ok, shown = self._runReview(self.logic.next)
            self._showCase(shown)

    def onLikertKey(self, score: int) -> None:
        if time.monotonic() - self._caseShownAt < self.KEY_RATING_DEBOUNCE_S:
            return
        self.onLikert(score)

    def onLikert(self, score: int) -> None:
        """Save realism + accuracy ratings + reason for the case on screen at once, then go on."""
        if not self._requireOpenStudy():
            return
        shown = self.logic.shown
        if shown is None:
            self.ui.readerStudyStatusLabel.text = _("No case is shown: use Previous to review a case.")
            return
        if shown.locked:
            self.ui.readerStudyStatusLabel.text = _("This case is already answered (answers cannot be changed here).")
            return
        ratings = {a: (group.checkedId() if group.checkedId() > 0 else None)
                   for a, (label, group, buttons) in self._attributeRows.items() if a in shown.attributes}
        ok, answer = self._runReview(self.logic.rate, score, ratings, self.ui.reasonLineEdit.text)
        if not ok:
            self._showCase(self.logic.shown)
            return
        answered, total = self.logic.progress()
        ok, shown = self._runReview(self.logic.next)
        self._showCase(shown)
        self.ui.readerStudyStatusLabel.text = _("Saved realism {score} ({answered} of {total} answered).").format(
            score=score, answered=answered, total=total)

    def _setAttributeRow(self, attribute: str, wording, value) -> None:
        label, group, buttons = self._attributeRows[attribute]
        visible = wording is not None
        label.text = f"{attribute.capitalize()}: \u201c{wording}\u201d" if visible else ""
        group.setExclusive(False)  # an exclusive group cannot uncheck its last button
        for score, radio in enumerate(buttons, start=1):
            radio.checked = value == score
        group.setExclusive(True)
        for widget in [label] + buttons:
            widget.visible = visible

    def _showCase(self, shown) -> None:
        """Put the shown case (or none) on the panel and centre the slice views on its lesion."""
        self._caseShownAt = time.monotonic()
        likert = self._likertButtons()
        if shown is None:
            for attribute in self._attributeRows:
                self._setAttributeRow(attribute, None, None)
            self.ui.attributeRatingsGroupBox.visible = False
            self.ui.reasonLineEdit.text = ""
            self.ui.answerLabel.text = ""
            for button in likert:
                button.enabled = False
            self.ui.reasonLineEdit.enabled = False
            isOpen = self.logic.is_open
            if isOpen:
                answered, total = self.logic.progress()
                self.ui.caseTitleLabel.text = _("End of the study: {answered} of {total} answered.").format(
                    answered=answered, total=total)
                self.ui.caseCounterLabel.text = _("{answered} of {total} answered").format(answered=answered, total=total)
            else:
                self.ui.caseTitleLabel.text = _("No case shown")
                self.ui.caseCounterLabel.text = "0 of 0"
            self.ui.previousCaseButton.enabled = isOpen
            self.ui.nextCaseButton.enabled = False
            self.ui.closeStudyButton.enabled = isOpen
            return
        slicer.util.setSliceViewerLayers(background=shown.volume_node, foreground=None, label=None, fit=True)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *shown.centre_ras,
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        answer = shown.answer
        self.ui.caseTitleLabel.text = _("{title}: {lesionType}").format(title=shown.title, lesionType=shown.lesion_type)
        answered, total = self.logic.progress()
        self.ui.caseCounterLabel.text = _("{position} of {total} ({answered} answered)").format(
            position=shown.position, total=total, answered=answered)
        report = shown.report or {}
        for attribute in self._attributeRows:
            self._setAttributeRow(attribute, report.get(attribute),
                                  answer.attributes.get(attribute) if answer is not None else None)
        self.ui.attributeRatingsGroupBox.visible = bool(shown.attributes)
        self.ui.attributeRatingsGroupBox.enabled = not shown.locked
        self.ui.reasonLineEdit.text = (answer.reason or "") if answer is not None else ""
        self.ui.reasonLineEdit.enabled = not shown.locked
        for button in likert:
            button.enabled = not shown.locked
        if answer is None:
            self.ui.answerLabel.text = ""
        elif shown.locked:
            self.ui.answerLabel.text = _("Answered: realism {realism} (saved; answers cannot be changed).").format(
                realism=answer.realism)
        else:
            self.ui.answerLabel.text = _("Answered: realism {realism} (saved; a new rating replaces it).").format(
                realism=answer.realism)
        self.ui.previousCaseButton.enabled = shown.position > 1
        self.ui.nextCaseButton.enabled = True
        self.ui.closeStudyButton.enabled = True


#
# PASTASynthLogic
#


class PASTASynthLogic(ScriptedLoadableModuleLogic):
    """Slicer-facing logic: delegates MRML work to PASTASynthLib.logic.SynthesisLogic."""

    def __init__(self, context: Optional[MRMLContext] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.synthesis = SynthesisLogic(context=context or MRMLContext.from_slicer_application())

    def getParameterNode(self):
        return PASTASynthParameterNode(super().getParameterNode())

    def enhancementText(self, slug: str, ctNode=None, segmentationNode=None, detect: bool = False) -> str:
        """The type's PASTA-Gen template phases; with ``detect`` also the phase measured in the CT
        (aorta/IVC segments), which reads the whole CT (on demand only)."""
        from PASTALib.labels import LesionType

        template = " or ".join(sorted(p.value for p in LesionType.parse(slug).template_phases))
        if not detect:
            return f"Template: {template} (Detect phase measures the CT)"
        _phase, explanation = self.synthesis.detect_enhancement(ctNode, segmentationNode)
        return f"{explanation} (template: {template})"

    @staticmethod
    def specFromParameterNode(parameterNode) -> dict:
        return SynthesisLogic.spec_from_parameters(
            parameterNode.lesionType, (parameterNode.sizeX, parameterNode.sizeY, parameterNode.sizeZ),
            shape=parameterNode.shape, density=parameterNode.density, heterogeneity=parameterNode.heterogeneity,
            surface=parameterNode.surface, invasion=parameterNode.invasion, seed=parameterNode.seed)

    @staticmethod
    def _location(parameterNode):
        return None if parameterNode.sampleLocation else parameterNode.locationPoints

    def previewFromParameterNode(self, parameterNode):
        return self.synthesis.preview(parameterNode.inputVolume, parameterNode.organSegmentation,
                                      self.specFromParameterNode(parameterNode), self._location(parameterNode))

    def synthesizeFromParameterNode(self, parameterNode):
        """Apply: new CT + segmentation + report node (input untouched), preview removed."""
        output = self.synthesis.synthesize(parameterNode.inputVolume, parameterNode.organSegmentation,
                                           self.specFromParameterNode(parameterNode), self._location(parameterNode))
        parameterNode.outputVolume = output.volume_node
        parameterNode.outputSegmentation = output.segmentation_node
        parameterNode.outputReport = output.report_node
        return output

    def removeOutputs(self, parameterNode) -> None:
        """Undo the last Apply."""
        from PASTASynthLib.logic import SynthesisOutput

        output = SynthesisOutput(parameterNode.outputVolume, parameterNode.outputSegmentation, {},
                                 parameterNode.outputReport)
        parameterNode.outputVolume = None
        parameterNode.outputSegmentation = None
        parameterNode.outputReport = None
        self.synthesis.remove_outputs(output)


#
# PASTASynthTest
#


class PASTASynthTest(ScriptedLoadableModuleTest):
    """Runs the same scenario functions as the pytest suite (PASTASynthLib.scenarios)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PASTASynthScenarios()
        self.setUp()
        self.test_PASTASynthReaderStudy()

    def test_PASTASynthScenarios(self):
        from PASTASynthLib import scenarios

        self.delayDisplay("Running PASTASynth MRML scenarios")
        with tempfile.TemporaryDirectory() as workDir:
            scenarios.run_all(MRMLContext.from_slicer_application(), workDir)
        self.delayDisplay("Test passed")

    def test_PASTASynthReaderStudy(self):
        from PASTASynthLib import scenarios

        self.delayDisplay("Running the blinded reader study scenarios")
        with tempfile.TemporaryDirectory() as workDir:
            scenarios.run_reader_study(MRMLContext.from_slicer_application(), workDir)
        self.delayDisplay("Test passed")
