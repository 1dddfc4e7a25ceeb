import tempfile
from typing import Annotated, Optional

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
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

# Only light, GUI-free helpers at top level: PASTALib's heavy parts (torch, monai) are
# imported inside the functions that need them, after the dependency check.
from PASTASynthLib import dependencies
from PASTASynthLib.logic import SynthesisLogic
from PASTASynthLib.mrml import MRMLContext

#: Report attribute wording (DESIGN.md); the .ui combo boxes list the same strings.
SHAPES = ["Round-like", "Irregular", "Wall thickening", "Punctate, nodular"]
DENSITIES = ["Hypodense", "Isodense", "Hyperdense"]
HETEROGENEITIES = ["Homogeneous", "Heterogeneous"]
MARGINS = ["Well-defined margin", "Ill-defined margin"]
INVASIONS = ["No close relationship with surrounding structures", "Close relationship with adjacent structures"]


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
    shape: str = SHAPES[0]
    density: str = DENSITIES[0]
    heterogeneity: str = HETEROGENEITIES[0]
    margin: str = MARGINS[0]
    invasion: str = INVASIONS[0]
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


#
# PASTASynthWidget
#


class PASTASynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: every action is a call into PASTASynthLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._report = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PASTASynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PASTASynthLogic()

        from PASTALib.labels import LesionType  # light: enums only

        for lesion_type in LesionType:
            self.ui.lesionTypeComboBox.addItem(lesion_type.display_name, lesion_type.slug)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.runTotalSegmentatorButton.connect("clicked(bool)", self.onRunTotalSegmentator)
        self.ui.lungMaskButton.connect("clicked(bool)", self.onLungMask)
        self.ui.locationPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.locationPlaceWidget.setCurrentNode)
        self.ui.lesionTypeComboBox.connect("currentIndexChanged(int)", self.onLesionTypeChanged)
        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.batchGenerateButton.connect("clicked(bool)", self.onBatchGenerate)
        self.ui.openStudyButton.connect("clicked(bool)", self.onOpenStudy)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCase)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        for score, button in enumerate(self._likertButtons(), start=1):
            button.connect("clicked(bool)", lambda checked=False, s=score: self.onLikert(s))

        self.ui.cancelButton.enabled = False
        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self.updateDependencyStatus()
        self.onLesionTypeChanged()

    def _likertButtons(self):
        return [self.ui.likert1Button, self.ui.likert2Button, self.ui.likert3Button,
                self.ui.likert4Button, self.ui.likert5Button]

    # -- parameter node -----------------------------------------------------------------

    def cleanup(self) -> None:
        self.removeObservers()

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

    def setParameterNode(self, inputParameterNode: Optional[PASTASynthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume
                     and self._parameterNode.organSegmentation)
        self.ui.applyButton.enabled = ready
        self.ui.previewButton.enabled = ready
        self.ui.applyButton.toolTip = _("Insert the lesion") if ready else _("Select a CT and its organ segmentation")

    # -- dependencies -------------------------------------------------------------------

    def updateDependencyStatus(self) -> None:
        report = dependencies.check_dependencies()
        self.ui.dependencyLabel.text = report.message
        self.ui.installDependenciesButton.visible = not report.ok

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install PASTA dependencies."), waitCursor=True):
            self.logic.installDependencies()
        self.updateDependencyStatus()

    # -- inputs -------------------------------------------------------------------------

    def onLesionTypeChanged(self, index=None) -> None:
        slug = self.ui.lesionTypeComboBox.currentData
        self.ui.enhancementLabel.text = self.logic.enhancementText(slug) if slug else ""
        if slug and self._parameterNode:
            self._parameterNode.lesionType = slug

    def onRunTotalSegmentator(self) -> None:
        slicer.util.infoDisplay(_("Organ segmentation with TotalSegmentator is available when "
                                  "the PASTALib anatomy module lands (pip extra 'totalsegmentator')."))

    def onLungMask(self) -> None:
        slicer.util.infoDisplay(_("The classical lung mask is available when the PASTALib anatomy module lands."))

    # -- synthesis ----------------------------------------------------------------------

    def onPreview(self) -> None:
        self.onApply(preview=True)

    def onApply(self, checked=False, preview=False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Lesion synthesis failed."), waitCursor=True):
            output = self.logic.synthesizeFromParameterNode(self._parameterNode, preview=preview)
            if output is None:
                slicer.util.infoDisplay(_("Lesion synthesis is available when PASTALib.synth lands."))
                return
            self._report = output.report
            self.ui.reportTextEdit.plainText = self.logic.reportText(output.report)
            slicer.util.setSliceViewerLayers(background=output.volume_node)

    def onCancel(self) -> None:
        self.logic.cancel()

    def onCopyReport(self) -> None:
        qt.QApplication.clipboard().setText(self.ui.reportTextEdit.plainText)

    def onSaveReport(self) -> None:
        if not self._report:
            slicer.util.warningDisplay(_("No report yet: apply a synthesis first."))
            return
        path = qt.QFileDialog.getSaveFileName(None, _("Save report"), "report.json", "JSON (*.json)")
        if path:
            self.logic.saveReport(self._report, path)

    # -- batch and reader study ---------------------------------------------------------

    def onBatchGenerate(self) -> None:
        slicer.util.infoDisplay(_("Batch generation (pasta generate) is available when the PASTALib CLI lands."))

    def onOpenStudy(self) -> None:
        slicer.util.infoDisplay(_("The blinded reader study is available when PASTALib.study lands."))

    def onPreviousCase(self) -> None:
        self.onOpenStudy()

    def onNextCase(self) -> None:
        self.onOpenStudy()

    def onLikert(self, score: int) -> None:
        self.onOpenStudy()


#
# PASTASynthLogic
#


class PASTASynthLogic(ScriptedLoadableModuleLogic):
    """Slicer-facing logic: delegates MRML work to PASTASynthLib.logic.SynthesisLogic."""

    def __init__(self, context: Optional[MRMLContext] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.synthesis = SynthesisLogic(context=context or MRMLContext.from_slicer_application())
        self._cancelRequested = False

    def getParameterNode(self):
        return PASTASynthParameterNode(super().getParameterNode())

    @staticmethod
    def enhancementText(slug: str) -> str:
        from PASTALib.labels import LesionType

        phases = sorted(p.value for p in LesionType.parse(slug).template_phases)
        return " or ".join(phases)

    @staticmethod
    def installDependencies() -> None:
        """Install missing packages, torch first and pinned (SlicerPyTorch if present)."""
        dependencies.install_in_slicer()

    def synthesizeFromParameterNode(self, parameterNode, preview: bool = False):
        """Run PASTALib.synth on the selected nodes; None while PASTALib.synth is missing."""
        import importlib.util

        if importlib.util.find_spec("PASTALib.synth") is None:
            return None
        spec = {
            "lesion_type": parameterNode.lesionType,
            "size_mm": [parameterNode.sizeX, parameterNode.sizeY, parameterNode.sizeZ],
            "shape": parameterNode.shape, "density": parameterNode.density,
            "heterogeneity": parameterNode.heterogeneity, "margin": parameterNode.margin,
            "invasion": parameterNode.invasion, "seed": parameterNode.seed,
        }
        if not parameterNode.sampleLocation and parameterNode.locationPoints \
                and parameterNode.locationPoints.GetNumberOfControlPoints():
            ras = parameterNode.locationPoints.GetNthControlPointPositionWorld(0)
            spec["center_mm"] = [-ras[0], -ras[1], ras[2]]
        ct = parameterNode.inputVolume
        output = self.synthesis.synthesize(ct, parameterNode.organSegmentation, spec,
                                           output_name=f"{ct.GetName()} {'preview' if preview else 'synthetic'}")
        parameterNode.outputVolume = output.volume_node
        parameterNode.outputSegmentation = output.segmentation_node
        return output

    def cancel(self) -> None:
        self._cancelRequested = True

    @staticmethod
    def reportText(report: dict) -> str:
        import json

        return report.get("text") or json.dumps(report, indent=2, ensure_ascii=False)

    @staticmethod
    def saveReport(report: dict, path: str) -> None:
        import json

        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)


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

    def test_PASTASynthScenarios(self):
        from PASTASynthLib import scenarios

        self.delayDisplay("Running PASTASynth MRML scenarios")
        with tempfile.TemporaryDirectory() as workDir:
            scenarios.run_all(MRMLContext.from_slicer_application(), workDir)
        self.delayDisplay("Test passed")
