// bindings.cpp - the only file that includes pybind11.
//
// Arguments are checked while the GIL is held; the copy itself runs with the
// GIL released, so several Python threads can gather concurrently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "pyengine_core.hpp"

namespace py = pybind11;

namespace {

using f32_array = py::array_t<float, py::array::c_style>;
using i64_array = py::array_t<int64_t, py::array::c_style>;

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void gather(const py::array& tile_in, const py::array& cx_in, const py::array& cy_in, int64_t size,
            const py::array& offset_in, const py::array& scale_in, py::array& out_in) {
  // Inputs must already have the right dtype and layout: no silent copies in the hot path.
  require(py::isinstance<f32_array>(tile_in) && tile_in.ndim() == 3,
          "tile must be a C-contiguous float32 array (nband, height, width), got " +
              std::string(py::str(tile_in.dtype())) + " " + shape_str(tile_in));
  auto tile = py::reinterpret_borrow<f32_array>(tile_in);
  require(py::isinstance<i64_array>(cx_in) && py::isinstance<i64_array>(cy_in) &&
              cx_in.ndim() == 1 && cy_in.ndim() == 1 && cx_in.shape(0) == cy_in.shape(0),
          "cx and cy must be C-contiguous int64 arrays of one length");
  auto cx = py::reinterpret_borrow<i64_array>(cx_in);
  auto cy = py::reinterpret_borrow<i64_array>(cy_in);
  const int64_t nband = tile.shape(0), n = cx.shape(0);
  require(py::isinstance<f32_array>(offset_in) && py::isinstance<f32_array>(scale_in) &&
              offset_in.ndim() == 1 && scale_in.ndim() == 1 && offset_in.shape(0) == nband &&
              scale_in.shape(0) == nband,
          "offset and scale must be float32 arrays of length nband = " + std::to_string(nband));
  auto offset = py::reinterpret_borrow<f32_array>(offset_in);
  auto scale = py::reinterpret_borrow<f32_array>(scale_in);
  require(py::isinstance<f32_array>(out_in) && out_in.writeable() && out_in.ndim() == 4 &&
              out_in.shape(0) == n && out_in.shape(1) == nband && out_in.shape(2) == size &&
              out_in.shape(3) == size,
          "out must be a writable C-contiguous float32 array of shape (" + std::to_string(n) +
              ", " + std::to_string(nband) + ", " + std::to_string(size) + ", " +
              std::to_string(size) + "), got " + std::string(py::str(out_in.dtype())) + " " +
              shape_str(out_in));
  auto out = py::reinterpret_borrow<f32_array>(out_in);

  const float* tile_p = tile.data();
  const int64_t* cx_p = cx.data();
  const int64_t* cy_p = cy.data();
  const float* off_p = offset.data();
  const float* sc_p = scale.data();
  float* out_p = out.mutable_data();
  const int64_t h = tile.shape(1), w = tile.shape(2);
  py::gil_scoped_release release;
  pyengine::gather_windows_f32(tile_p, nband, h, w, cx_p, cy_p, n, size, off_p, sc_p, out_p);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyengine's compiled core (see csrc/pyengine_core.hpp). Thread-safe; releases the GIL.";
  py::register_exception<pyengine::ArgumentError>(m, "ArgumentError", PyExc_ValueError);
  m.def("gather", &gather, py::arg("tile"), py::arg("cx"), py::arg("cy"), py::arg("size"),
        py::arg("offset"), py::arg("scale"), py::arg("out"),
        "Copy size x size windows centred on (cx, cy) from tile (nband, h, w) float32 into\n"
        "out (n, nband, size, size) float32 as (tile - offset[b]) * scale[b]; outside pixels\n"
        "are NaN. The GIL is released during the copy.");
}
