#include "kernels/backend.h"
int main() { dj::select_backend(); return 0; }
