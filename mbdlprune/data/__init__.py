"""Data for fine-tuning and evaluation: read image or k-space files, split by file, turn slices into samples.

* :mod:`.volumes`: NIfTI, NumPy and fastMRI HDF5 files into :class:`Volume` objects (each file
  read once; NaN/Inf and all-zero slices dropped with a note; no path inside a file followed);
* :mod:`.splits`: training/validation split by file, overlap refused by sha256;
* :mod:`.samples`: images fitted to the operator, measurements simulated with per-sample
  seeds, the fine-tuning dataset.
"""

from .volumes import (_drop_invalid_slices, EMPTY_FRACTION, _finite_part, FITS, _h5_array, H5_SUFFIXES, IMAGE_H5_KEYS, _image_stack, _kspace_stack, list_data_files, NIFTI_SUFFIXES, NORMALIZATIONS, _numeric, NUMPY_SUFFIXES, _os_problem, _quiet_nibabel, _read_bytes, _read_h5, _read_nifti, _read_npz, read_volumes, _suffix, SUPPORTED, Volume, volume_notes, _walk_files)  # noqa: F401
from .splits import (check_no_overlap, file_hashes, split_by_file)  # noqa: F401
from .samples import (build_dataset, _fit_slices, _images_and_kept, kspace_to_measurements, _measurement_shape, nonempty_slices, PreparedData, ReconDataset, sample_seed, simulate, slices_to_images)  # noqa: F401
