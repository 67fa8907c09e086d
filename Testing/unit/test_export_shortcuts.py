"""The export's shortcuts give what the slow way gives. export.encoding writes sequences ahead of
pydicom: its bytes must be pydicom's own, for every VR and shape of value, every character set,
defined and undefined lengths, and whatever it hands back to pydicom (raw elements, ambiguous VRs).
The memoized highdicom look-up and the SEG's labelled-slice scan answer as the originals do."""

from __future__ import annotations

import copy
import datetime
import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DA, DSfloat, IS, PersonName

from MedImgAILib.export.encoding import encode_items, preencode_sequences, sequence_bytes_as_pydicom_writes


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _every_vr_item() -> Dataset:
    """One item with each VR the exported objects use, and the awkward values of each."""
    it = Dataset()
    it.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # UI, odd length (NUL pad)
    it.ReferencedSOPInstanceUID = "1.2.3.44"  # UI, even length
    it.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]  # CS, several values
    it.Modality = "CT"
    it.CodeValue = "27925004"  # SH
    it.CodeMeaning = "Nodule"  # LO, even
    it.SeriesDescription = "AI measures"  # LO, odd (space pad)
    it.TextValue = "Lung-RADS v2022 4A: 3-month LDCT; PET/CT may be used"  # UT
    it.ImageComments = ""  # LT, empty
    it.ImagePositionPatient = [-125.5, DSfloat("-100.25"), 0]  # DS, several values
    it.SliceThickness = DSfloat("1.250", auto_format=False)  # DS keeps its original string
    it.NumericValue = DSfloat(3.14159265358979, auto_format=True)  # DS auto-formatted
    it.InstanceNumber = IS("7")  # IS
    it.Rows = 512  # US
    it.DimensionIndexValues = [1, 2]  # UL, several
    it.FloatingPointValue = 2.5e-3  # FD
    it.RescaleSlope = None  # DS, empty
    it.StudyDate = "20261129"  # DA as a string
    it.ContentTime = "101010.123"  # TM as a string, odd length
    it.ObservationDateTime = "20261129101010"  # DT
    it.PersonName = "Doe^Jane"  # PN: pydicom writes it
    it.AcquisitionDate = DA(datetime.date(2026, 11, 29))  # DA object: pydicom formats it
    it.add_new(0x00091010, "LO", "private text")  # private creator-less element
    it.add_new(0x00091011, "UN", b"\x01\x02")
    it.add_new(0x00200000 + 0x10000, "UL", 4)  # retired group length: pydicom drops it
    it.FrameIncrementPointer = 0x00181063  # AT
    it.ConceptNameCodeSequence = [_item(CodeValue="121071", CodingSchemeDesignator="DCM", CodeMeaning="Finding")]
    it.ContentSequence = []  # empty sequence
    return it


def _pydicom_bytes(items, charset=None) -> bytes:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.ReferencedImageSequence = copy.deepcopy(items)
    b = sequence_bytes_as_pydicom_writes(ds, "ReferencedImageSequence")
    return b[12:]  # the value, after tag, VR, reserved and length


@pytest.mark.filterwarnings("ignore:Failed to encode value")  # Latin text in a Cyrillic set: pydicom replaces, both ways
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"], "ISO_IR 144"])
def test_every_vr_is_encoded_as_pydicom_writes_it(charset):
    items = [_every_vr_item(), _every_vr_item()]
    items[1].CodeMeaning = "Knötchen"  # non-ASCII text: pydicom's charset encoding
    items[1].PersonName = PersonName("Müller^Jürgen")
    cs = charset if charset is not None else "iso8859"
    assert encode_items(items, cs) == _pydicom_bytes(items, charset)


def test_nested_specific_character_set_and_undefined_lengths():
    inner = _item(CodeMeaning="Ŝtudo", SpecificCharacterSet="ISO_IR 192")
    inner.is_undefined_length_sequence_item = True
    outer = _item(ReferencedSOPInstanceUID="1.2.3")
    outer.ConceptNameCodeSequence = [inner]
    outer["ConceptNameCodeSequence"].is_undefined_length = True
    assert encode_items([outer], "ISO_IR 100") == _pydicom_bytes([outer], "ISO_IR 100")


def test_values_over_64k_and_lut_descriptors_are_pydicoms():
    big = _item(ImageComments="x" * 70000)  # LT: 16-bit length overflows, pydicom writes UN
    lut = _item(LUTDescriptor=[256, 0, 16])
    lut["LUTDescriptor"].VR = "US"
    with pytest.warns(UserWarning):
        ours = encode_items([big, lut], "iso8859")
    with pytest.warns(UserWarning):
        theirs = _pydicom_bytes([big, lut])
    assert ours == theirs


def test_raw_and_ambiguous_elements_are_left_to_pydicom():
    raw = Dataset()
    raw[0x00081155] = RawDataElement(0x00081155, "UI", 4, b"1.2\0", 0, False, True)
    assert encode_items([raw]) is None
    amb = Dataset()
    amb.add(DataElement(0x00283006, "US or OW", [1, 2, 3]))  # LUT Data
    assert encode_items([amb]) is None


def _decode_all(ds: Dataset) -> None:
    """Convert every raw element (at any depth) of a dataset read from a file, in place."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)


def _file_bytes(ds: Dataset) -> bytes:
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"])
def test_real_files_with_sequences_are_written_byte_for_byte(name):
    """pydicom's own test files, made to look built (not read) as our objects are: the pre-encoded
    dataset writes the same file as pydicom does."""
    src = pydicom.dcmread(get_testdata_file(name))
    _decode_all(src)
    built = Dataset()
    for elem in src:  # decoded, as a freshly built dataset holds them
        built.add(copy.deepcopy(elem))
        # a built dataset's top-level sequences have defined lengths (those of undefined length are
        # left to pydicom); nested ones keep the file's undefined lengths, which are encoded
        built[elem.tag].is_undefined_length = False
    built.file_meta = FileMetaDataset(src.file_meta)
    built.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "PixelData" in built and src.file_meta.TransferSyntaxUID.is_compressed:
        del built.PixelData
    expected = _file_bytes(copy.deepcopy(built))
    preencode_sequences(built)
    assert {e.tag for e in built.elements() if e.is_raw} == {e.tag for e in src if e.VR == "SQ"}
    assert _file_bytes(built) == expected
    # and the sequences read back as they were
    for elem in src:
        if elem.VR == "SQ":
            assert built[elem.tag].value == elem.value


def test_other_transfer_syntaxes_are_left_alone():
    ds = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    preencode_sequences(ds)
    assert not any(e.is_raw and e.VR == "SQ" for e in ds.elements())


def test_sequence_values_read_back_equal():
    items = Sequence([_every_vr_item()])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = items
    expected = _file_bytes(copy.deepcopy(ds))
    preencode_sequences(ds)
    assert ds.get_item("ReferencedImageSequence").is_raw
    assert _file_bytes(ds) == expected
    back = ds.ReferencedImageSequence[0]
    assert back.CodeMeaning == "Nodule" and back.DimensionIndexValues == [1, 2]
    assert back.ConceptNameCodeSequence[0].CodeValue == "121071"


def test_memoized_iod_lookup_answers_as_highdicom():
    """export._highdicom remembers highdicom's IOD table look-ups: the same answers, for every SOP class
    highdicom knows and the attributes it asks about; an unknown SOP class still raises."""
    import highdicom._standard_utils as su
    import highdicom.base
    import highdicom.sr.content

    from MedImgAILib.export import _highdicom

    original = su.is_attribute_in_iod.__wrapped_lookup__
    assert su.is_attribute_in_iod is _highdicom.is_attribute_in_iod
    assert highdicom.base.is_attribute_in_iod is _highdicom.is_attribute_in_iod
    assert highdicom.sr.content.is_attribute_in_iod is _highdicom.is_attribute_in_iod
    questions = [("NumberOfFrames", None), ("PixelData", ["IconImageSequence"]), ("ContentDate", None),
                 ("FloatPixelData", ["IconImageSequence"]), ("ContentTime", None)]
    for uid in list(su.get_sop_class_iod_map())[::3]:
        for attr, exclude in questions:
            for _ in range(2):  # computed, then remembered
                assert _highdicom.is_attribute_in_iod(attr, uid, exclude) == original(attr, uid, exclude), (uid, attr)
    with pytest.raises(KeyError):
        _highdicom.is_attribute_in_iod("PixelData", "1.2.3.4")


def _box_by_nonzero(arr: np.ndarray):
    """The bounding box of the non-zero voxels as np.nonzero gives it (the reference)."""
    idx = np.nonzero(arr)
    if idx[0].size == 0:
        return None
    return tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, bool])
@pytest.mark.parametrize("shape", [(7, 16, 16), (5, 7, 9), (1, 4, 2)])
def test_foreground_box_word_scan_matches_nonzero(dtype, shape):
    """The labelled-slice scan in 8-byte words (findings.extract, used by the SEG and the export's
    choice of full headers) finds the box np.nonzero finds, for word-sized and odd-sized slices,
    signed values and floats (-0.0 is zero), and none."""
    from MedImgAILib.findings.extract import foreground_box, nonzero_slices

    rng = np.random.default_rng(3)
    for trial in range(20):
        arr = np.zeros(shape, dtype=dtype)
        for _ in range(trial % 4):
            k, j, i = (int(rng.integers(n)) for n in shape)
            arr[k, j, i] = -1 if np.issubdtype(arr.dtype, np.signedinteger) else 1
        if dtype is np.float32:
            arr[0, 0, 0] = -0.0
        assert foreground_box(arr) == _box_by_nonzero(arr)
        assert np.array_equal(nonzero_slices(arr), [bool(np.count_nonzero(x)) for x in arr])
    view = np.zeros((4, 8, 16), dtype=np.uint16)[:, :, ::2]  # not contiguous: plain any()
    view[2, 3, 4] = 9
    assert foreground_box(view) == _box_by_nonzero(view)


def test_key_image_outline_traced_on_the_lesion_box_is_the_whole_slice_outline():
    """Key-image outlines come from the mask's bounding box: the very paths (points and order) that
    tracing the whole slice gives, for blobs at the edges, several blobs and holes."""
    from scipy import ndimage
    from skimage.measure import find_contours

    from MedImgAILib.export.key_images import outline_paths

    rng = np.random.default_rng(7)
    yy, xx = np.ogrid[:96, :128]
    for trial in range(40):
        m = np.zeros((96, 128), bool)
        for _ in range(1 + trial % 3):
            cy, cx, r = rng.integers(0, 96), rng.integers(0, 128), rng.uniform(0.6, 15)
            m |= (yy - cy) ** 2 / (r * rng.uniform(0.5, 1.5)) ** 2 + (xx - cx) ** 2 / r**2 <= 1
        if trial % 5 == 0:
            m &= ~ndimage.binary_erosion(m, iterations=2)  # rings: inner contours too
        scale = 1 + trial % 3
        whole = [[((x - 1 + 0.5) * scale, (y - 1 + 0.5) * scale) for y, x in c]
                 for c in find_contours(np.pad(m.astype(np.float32), 1), 0.5)]
        assert outline_paths(m, scale) == whole
    assert outline_paths(np.zeros((4, 4), bool), 2) == []


def test_reference_sequence_bytes_are_what_pydicom_writes_for_the_items():
    """The SEG's and SR's 300-item reference lists, made as bytes once, equal pydicom's encoding of
    the same items (odd and even UID lengths), and read back as those items."""
    from MedImgAILib.export.seg import reference_sequence

    pairs = [("1.2.840.10008.5.1.4.1.1.2", f"1.2.826.0.1.3680043.8.498.{n}{'7' * (n % 3)}") for n in range(7)]
    raw = reference_sequence(0x00082112, pairs)
    ds = Dataset()
    ds.SourceImageSequence = [_item(ReferencedSOPClassUID=c, ReferencedSOPInstanceUID=i) for c, i in pairs]
    assert raw.value == sequence_bytes_as_pydicom_writes(ds, "SourceImageSequence")[12:]  # after tag, VR, length
    back = Dataset({raw.tag: raw})
    assert [(it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID) for it in back.SourceImageSequence] == pairs


def test_raw_reference_lists_are_written_as_they_are_inside_items_and_at_the_top():
    """The pre-encoded reference lists (raw explicit-VR sequences) inside an item are written
    verbatim, as pydicom writes them; at the top level they stay raw through pre-encoding (not
    decoded by the ambiguous-VR pass); the file is pydicom's, and reads back as the items."""
    from MedImgAILib.export.seg import reference_sequence

    pairs = [("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{n}") for n in range(5)]
    series = _item(SeriesInstanceUID="1.2.3")
    series[0x0008114A] = reference_sequence(0x0008114A, pairs)
    assert encode_items([series]) == _pydicom_bytes([series])
    raw_other = Dataset()
    raw_other[0x00081155] = RawDataElement(0x00081155, "UI", 4, b"1.2\0", 0, False, True)
    assert encode_items([raw_other]) is None  # raw values other than such sequences: left to pydicom

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.ReferencedSeriesSequence = [series]
    ds[0x00082112] = reference_sequence(0x00082112, pairs)  # Source Image Sequence
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    expected = _file_bytes(copy.deepcopy(ds))
    preencode_sequences(ds)
    assert isinstance(ds._dict[0x00082112], RawDataElement) and isinstance(ds._dict[0x00081115], RawDataElement)
    assert _file_bytes(ds) == expected
    assert [it.ReferencedSOPInstanceUID for it in ds.SourceImageSequence] == [i for _, i in pairs]
