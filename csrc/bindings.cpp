// bindings.cpp - the only file that includes pybind11.
//
// Arguments are checked while the GIL is held; the copy itself runs with the
// GIL released, so several Python threads can gather concurrently.  BatchRing
// releases the GIL for acquire, fill (the enqueue), wait and close; it does not
// keep its arrays alive: pyengine.batching.BatchRing does.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pyengine_core.hpp"
#include "sigbus.hpp"

namespace py = pybind11;

namespace {

using f32_array = py::array_t<float, py::array::c_style>;
using i64_array = py::array_t<int64_t, py::array::c_style>;
using i32_array = py::array_t<int32_t, py::array::c_style>;

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + ")";
}

// "float32 (2, 3)" for an array, the type name otherwise: for error messages.
std::string describe(const py::handle& obj) {
  if (!py::isinstance<py::array>(obj)) {
    return std::string(py::str(py::type::of(obj).attr("__name__")));
  }
  const auto a = py::reinterpret_borrow<py::array>(obj);
  return std::string(py::str(a.dtype())) + " " + shape_str(a);
}

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

// The output dtype of a C-contiguous float32 or float16 array; false otherwise.
bool output_dtype(const py::handle& obj, pyengine::Dtype* dtype) {
  if (!py::isinstance<py::array>(obj)) return false;
  const auto a = py::reinterpret_borrow<py::array>(obj);
  if (!c_contiguous(a)) return false;
  if (a.dtype().equal(py::dtype::of<float>())) {
    *dtype = pyengine::Dtype::float32;
    return true;
  }
  if (a.dtype().equal(py::dtype("float16"))) {
    *dtype = pyengine::Dtype::float16;
    return true;
  }
  return false;
}

// A writable C-contiguous int32 array of shape (n, nband), or None (null): NaN pixels
// per window and band.
int32_t* nan_count_ptr(const py::object& obj, int64_t n, int64_t nband, const std::string& name) {
  if (obj.is_none()) return nullptr;
  const bool ok = py::isinstance<i32_array>(obj);
  auto a = ok ? py::reinterpret_borrow<i32_array>(obj) : i32_array();
  require(ok && a.writeable() && a.ndim() == 2 && a.shape(0) == n && a.shape(1) == nband,
          name + " must be None or a writable C-contiguous int32 array of shape " +
              shape_str({n, nband}) + ", got " + describe(obj));
  return a.mutable_data();
}

struct Windows {
  f32_array tile;
  i64_array cx, cy;
  f32_array offset, scale;
  int64_t nband, height, width, n;
};

// Inputs must already have the right dtype and layout: no silent copies in the hot path.
// nband < 0: any number of bands.
Windows check_windows(const py::array& tile_in, const py::array& cx_in, const py::array& cy_in,
                      const py::array& offset_in, const py::array& scale_in, int64_t nband = -1) {
  require(py::isinstance<f32_array>(tile_in) && tile_in.ndim() == 3,
          "tile must be a C-contiguous float32 array (nband, height, width), got " +
              describe(tile_in));
  require(nband < 0 || tile_in.shape(0) == nband,
          "tile has " + std::to_string(tile_in.shape(0)) + " bands, the ring " +
              std::to_string(nband));
  require(py::isinstance<i64_array>(cx_in) && py::isinstance<i64_array>(cy_in) &&
              cx_in.ndim() == 1 && cy_in.ndim() == 1 && cx_in.shape(0) == cy_in.shape(0),
          "cx and cy must be C-contiguous int64 arrays of one length");
  Windows w;
  w.tile = py::reinterpret_borrow<f32_array>(tile_in);
  w.cx = py::reinterpret_borrow<i64_array>(cx_in);
  w.cy = py::reinterpret_borrow<i64_array>(cy_in);
  w.nband = w.tile.shape(0);
  w.height = w.tile.shape(1);
  w.width = w.tile.shape(2);
  w.n = w.cx.shape(0);
  require(py::isinstance<f32_array>(offset_in) && py::isinstance<f32_array>(scale_in) &&
              offset_in.ndim() == 1 && scale_in.ndim() == 1 && offset_in.shape(0) == w.nband &&
              scale_in.shape(0) == w.nband,
          "offset and scale must be float32 arrays of length nband = " + std::to_string(w.nband));
  w.offset = py::reinterpret_borrow<f32_array>(offset_in);
  w.scale = py::reinterpret_borrow<f32_array>(scale_in);
  return w;
}

void gather(const py::array& tile_in, const py::array& cx_in, const py::array& cy_in, int64_t size,
            const py::array& offset_in, const py::array& scale_in, py::array out_in,
            const py::object& nan_count_in) {
  const Windows w = check_windows(tile_in, cx_in, cy_in, offset_in, scale_in);
  pyengine::Dtype dtype = pyengine::Dtype::float32;
  require(output_dtype(out_in, &dtype) && out_in.writeable() && out_in.ndim() == 4 &&
              out_in.shape(0) == w.n && out_in.shape(1) == w.nband && out_in.shape(2) == size &&
              out_in.shape(3) == size,
          "out must be a writable C-contiguous float32 or float16 array of shape " +
              shape_str({w.n, w.nband, size, size}) + ", got " + describe(out_in));
  int32_t* nan_p = nan_count_ptr(nan_count_in, w.n, w.nband, "nan_count");

  const float* tile_p = w.tile.data();
  const int64_t* cx_p = w.cx.data();
  const int64_t* cy_p = w.cy.data();
  const float* off_p = w.offset.data();
  const float* sc_p = w.scale.data();
  void* out_p = out_in.mutable_data();
  py::gil_scoped_release release;
  if (dtype == pyengine::Dtype::float32) {
    pyengine::gather_windows_f32(tile_p, w.nband, w.height, w.width, cx_p, cy_p, w.n, size, off_p,
                                 sc_p, static_cast<float*>(out_p), nan_p);
  } else {
    pyengine::gather_windows_f16(tile_p, w.nband, w.height, w.width, cx_p, cy_p, w.n, size, off_p,
                                 sc_p, static_cast<uint16_t*>(out_p), nan_p);
  }
}

std::unique_ptr<pyengine::BatchRing> make_ring(const py::sequence& slots,
                                               const py::object& nan_counts, int64_t threads) {
  const int64_t k = static_cast<int64_t>(slots.size());
  require(k >= 1, "slots must hold at least one array");
  const std::string want =
      "a writable C-contiguous float32 or float16 array of shape (capacity, nband, S, S)";
  std::vector<void*> ptrs;
  std::vector<int64_t> shape;
  pyengine::Dtype dtype = pyengine::Dtype::float32;
  for (int64_t i = 0; i < k; ++i) {
    const py::object obj = slots[static_cast<size_t>(i)];
    const std::string name = "slots[" + std::to_string(i) + "]";
    pyengine::Dtype dt = pyengine::Dtype::float32;
    const bool ok = output_dtype(obj, &dt);
    auto a = ok ? py::reinterpret_borrow<py::array>(obj) : py::array();
    require(ok && a.writeable() && a.ndim() == 4 && a.shape(0) >= 1 && a.shape(1) >= 1 &&
                a.shape(2) >= 1 && a.shape(2) == a.shape(3),
            name + " must be " + want + ", got " + describe(obj));
    const std::vector<int64_t> s(a.shape(), a.shape() + 4);
    if (i == 0) {
      shape = s;
      dtype = dt;
    }
    require(s == shape && dt == dtype, name + " is " + describe(obj) + " but slots[0] is " +
                                           describe(slots[0]) + ": all slots must match");
    ptrs.push_back(a.mutable_data());
  }
  std::vector<int32_t*> counts(static_cast<size_t>(k), nullptr);
  if (!nan_counts.is_none()) {
    const auto seq = nan_counts.cast<py::sequence>();
    require(static_cast<int64_t>(seq.size()) == k,
            "nan_counts must hold one array per slot: " + std::to_string(k) + ", got " +
                std::to_string(seq.size()));
    for (int64_t i = 0; i < k; ++i) {
      const std::string name = "nan_counts[" + std::to_string(i) + "]";
      counts[static_cast<size_t>(i)] =
          nan_count_ptr(seq[static_cast<size_t>(i)], shape[0], shape[1], name);
    }
  }
  return std::make_unique<pyengine::BatchRing>(std::move(ptrs), std::move(counts), dtype, shape[0],
                                               shape[1], shape[2], threads);
}

void ring_fill(pyengine::BatchRing& ring, int64_t slot, int64_t start, const py::array& tile_in,
               const py::array& cx_in, const py::array& cy_in, const py::array& offset_in,
               const py::array& scale_in) {
  const Windows w = check_windows(tile_in, cx_in, cy_in, offset_in, scale_in, ring.nband());
  const float* tile_p = w.tile.data();
  const int64_t* cx_p = w.cx.data();
  const int64_t* cy_p = w.cy.data();
  const float* off_p = w.offset.data();
  const float* sc_p = w.scale.data();
  py::gil_scoped_release release;
  ring.fill(slot, start, tile_p, w.nband, w.height, w.width, cx_p, cy_p, w.n, off_p, sc_p);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyengine's compiled core (see csrc/pyengine_core.hpp). Thread-safe; releases the GIL.";
  // The SIGBUS handler for mapped inputs (csrc/sigbus.hpp); pyengine.io.mosaic uses these.
  m.def("sigbus_register", [](std::uintptr_t start, std::size_t length, const std::string& path) {
    return pyengine::sigbus::register_region(start, length, path.c_str());
  }, py::arg("start"), py::arg("length"), py::arg("path"),
        "Record a mapping of file path at [start, start + length); its slot, -1 if full.");
  m.def("sigbus_unregister", &pyengine::sigbus::unregister_region, py::arg("slot"),
        "Forget a slot of sigbus_register.");
  m.def("sigbus_install", &pyengine::sigbus::install, py::arg("exit_code"),
        "Install the SIGBUS handler: one line naming the file, then _exit(exit_code).");
  m.def("sigbus_installed", &pyengine::sigbus::installed, "Whether sigbus_install has run.");
  py::register_exception<pyengine::ArgumentError>(m, "ArgumentError", PyExc_ValueError);
  m.def("gather", &gather, py::arg("tile"), py::arg("cx"), py::arg("cy"), py::arg("size"),
        py::arg("offset"), py::arg("scale"), py::arg("out"), py::arg("nan_count") = py::none(),
        "Copy size x size windows centred on (cx, cy) from tile (nband, h, w) float32 into\n"
        "out (n, nband, size, size) float32 or float16 as (tile - offset[b]) * scale[b];\n"
        "outside pixels are NaN. nan_count (n, nband) int32, if given, receives the NaN\n"
        "pixels of each window in each band. The GIL is released during the copy.");

  py::class_<pyengine::BatchRing>(
      m, "BatchRing",
      "Batch slots (capacity, nband, S, S) filled by worker threads; see pyengine_core.hpp.\n"
      "Keeps raw pointers: the caller keeps slots, nan_counts and every fill's arrays alive\n"
      "until the slot's wait() returns (pyengine.batching.BatchRing does).")
      .def(py::init(&make_ring), py::arg("slots"), py::arg("nan_counts") = py::none(),
           py::arg("threads") = 1)
      .def("acquire", &pyengine::BatchRing::acquire, py::arg("timeout_ms") = -1,
           py::call_guard<py::gil_scoped_release>(),
           "Index of a free slot, now filling; -1 after timeout_ms (< 0: wait forever).")
      .def("fill", &ring_fill, py::arg("slot"), py::arg("start"), py::arg("tile"), py::arg("cx"),
           py::arg("cy"), py::arg("offset"), py::arg("scale"),
           "Enqueue the windows (cx, cy) of tile into rows [start, start + len(cx)) of slot.")
      .def("wait", &pyengine::BatchRing::wait, py::arg("slot"),
           py::call_guard<py::gil_scoped_release>(),
           "Block until the slot's fills are done; re-raise a worker's error.")
      .def("release", &pyengine::BatchRing::release, py::arg("slot"))
      .def("close", &pyengine::BatchRing::close, py::call_guard<py::gil_scoped_release>())
      .def(
          "_debug_post",
          [](pyengine::BatchRing& ring, int64_t slot, int64_t sleep_ms, const std::string& error) {
            py::gil_scoped_release release;
            ring.post(slot, [sleep_ms, error] {
              std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
              if (!error.empty()) throw pyengine::ArgumentError(error);
            });
          },
          py::arg("slot"), py::arg("sleep_ms"), py::arg("error") = "",
          "For tests: a job on slot that sleeps, then raises ValueError(error) unless empty.")
      .def_property_readonly("nslots", &pyengine::BatchRing::nslots)
      .def_property_readonly("capacity", &pyengine::BatchRing::capacity)
      .def_property_readonly("nband", &pyengine::BatchRing::nband)
      .def_property_readonly("size", &pyengine::BatchRing::size)
      .def_property_readonly("threads", &pyengine::BatchRing::threads)
      .def_property_readonly("dtype", [](const pyengine::BatchRing& ring) {
        return ring.dtype() == pyengine::Dtype::float32 ? "float32" : "float16";
      });
}
