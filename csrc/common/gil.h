// Releases the GIL for a kernel's lifetime when the calling thread holds it.
#pragma once
#include <Python.h>

namespace recis {

struct GilRelease {
  PyThreadState* state = (Py_IsInitialized() && PyGILState_Check()) ? PyEval_SaveThread() : nullptr;
  GilRelease() = default;
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;
  ~GilRelease() {
    if (state) PyEval_RestoreThread(state);
  }
};

}  // namespace recis
